"""Drives a Firecracker VM through the unchanged `Api` class of PyPI's firecracker-python.

Usage: python_sdk.py SOCKET KERNEL BOOT_ARGS DRIVE

Run by tests/fc_clients.rs with the interpreter of a venv holding firecracker-python
0.0.5 (installed with --no-deps) and its pinned requests / requests-unixsocket. Only
`firecracker.api` is loaded: the package's __init__ imports docker, pyroute2 and more,
and checks for a firecracker binary, so it is skipped (a bare package module stands in
for it). The client puts the socket path into a URL's host, which HTTP libraries
lowercase: pass a lowercase path (the test passes a relative one and sets the cwd).

Handshake with the test on stdin/stdout: after the start it prints `fc-client: running`
and waits for a line; after the pause `fc-client: paused` and waits again; at the end it
prints `fc-client: result <one JSON object>` with what it observed.
"""

import importlib.util
import json
import os
import sys
import types


def load_client_api():
    """Imports firecracker.api without running firecracker/__init__.py."""
    spec = importlib.util.find_spec("firecracker")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("fc-client: firecracker-python is not installed")
    package = types.ModuleType("firecracker")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["firecracker"] = package
    from firecracker import api
    from firecracker.exceptions import APIError

    return api.Api, APIError


def wait_for_test(step):
    print(f"fc-client: {step}", flush=True)
    if not sys.stdin.readline():
        raise SystemExit(f"fc-client: the test went away at {step}")


def main():
    sock, kernel, boot_args, drive = sys.argv[1:5]
    Api, APIError = load_client_api()
    api = Api(sock)
    seen = {"status": {}}

    def put(name, resource, **body):
        seen["status"][name] = resource.put(**body).status_code

    def patch(name, resource, **body):
        seen["status"][name] = resource.patch(**body).status_code

    def get(name, resource):
        res = resource.get()
        seen["status"][name] = res.status_code
        return res.json()

    seen["version"] = get("version", api.version)
    seen["describe_before"] = get("describe_before", api.describe)
    put("machine_config", api.machine_config, vcpu_count=1, mem_size_mib=32)
    put("boot", api.boot, kernel_image_path=kernel, boot_args=boot_args)
    put(
        "drive",
        api.drive,
        drive_id="rootfs",
        path_on_host=drive,
        is_root_device=False,
        is_read_only=False,
    )
    put("start", api.actions, action_type="InstanceStart")
    seen["state_started"] = get("describe_started", api.describe)["state"]
    wait_for_test("running")

    patch("pause", api.vm, state="Paused")
    seen["state_paused"] = get("describe_paused", api.describe)["state"]
    wait_for_test("paused")

    patch("resume", api.vm, state="Resumed")
    seen["state_resumed"] = get("describe_resumed", api.describe)["state"]
    seen["vm_config"] = get("vm_config", api.vm_config)
    try:
        api.machine_config.put(vcpu_count=1, mem_size_mib=64)
        seen["error_after_start"] = None
    except APIError as e:
        seen["error_after_start"] = str(e)
    api.close()
    print("fc-client: result " + json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
