//! virtio-vsock behind the virtio-mmio transport, driven like a guest driver would, with
//! real Unix sockets on the host side (in a per-process directory under /tmp that is
//! emptied and removed after every input).
//!
//! Input: the `kiln_fuzz::script` header (queue 0 RX, 1 TX, 2 event; guest CID 3) and
//! ops. Op 10 is a host program (`sel` u8, then per kind): 0 connect to the device's
//! socket and write `CONNECT <port>\n` (`port` u8); 1 write bytes on client `i` (`i` u8,
//! `n` u8, `n` bytes); 2 close client `i`; 3 read what client `i` has. Op 11 (`sel`
//! u8): bit 0 a backend pass (as the device thread's loop would, only when the device
//! watches its epoll fd), bit 1 bind a host listener `<uds>_<port>` (`port` u8), bit 2
//! accept on the listeners and write a byte to each accepted stream, bit 3
//! `send_transport_reset`. Checked beyond "no panic": the connection count stays
//! within `MAX_CONNS`.

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use devices::virtio::vsock::muxer::MAX_CONNS;
use devices::virtio::vsock::Vsock;
use devices::virtio::VirtioDevice;
use event_manager::EventSet;
use kiln_fuzz::input::Input;
use kiln_fuzz::script::Session;
use libfuzzer_sys::fuzz_target;

const MAX_CLIENTS: usize = 8;
const MAX_LISTENERS: usize = 4;

/// The per-process socket directory, created fresh for each input.
fn sock_dir() -> PathBuf {
    let d = PathBuf::from(format!("/tmp/kiln-fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).expect("socket dir");
    d
}

fuzz_target!(|data: &[u8]| {
    let dir = sock_dir();
    let uds = dir.join("v.sock");
    let mut inp = Input::new(data);
    let mut clients: Vec<UnixStream> = Vec::new();
    let mut listeners: Vec<UnixListener> = Vec::new();
    let mut accepted: Vec<UnixStream> = Vec::new();
    {
        let path = uds.clone();
        let mut s = Session::start(&mut inp, 3, move |_| Vsock::new(3, &path).expect("vsock"));
        s.run(&mut inp, |op, s, inp| {
            let sel = inp.u8();
            if op == 10 {
                let i = match sel % 4 {
                    0 => usize::MAX,
                    _ => usize::from(inp.u8()),
                };
                match sel % 4 {
                    0 => {
                        let port = inp.u8();
                        if clients.len() < MAX_CLIENTS {
                            if let Ok(mut c) = UnixStream::connect(&uds) {
                                let _ = c.set_nonblocking(true);
                                let _ = c.write_all(format!("CONNECT {port}\n").as_bytes());
                                clients.push(c);
                            }
                        }
                    }
                    1 => {
                        let n = usize::from(inp.u8());
                        let bytes = inp.bytes(n);
                        if let Some(c) = clients.get_mut(i % MAX_CLIENTS) {
                            let _ = c.write(bytes);
                        }
                    }
                    2 => {
                        if i % MAX_CLIENTS < clients.len() {
                            clients.remove(i % MAX_CLIENTS);
                        }
                    }
                    _ => {
                        if let Some(c) = clients.get_mut(i % MAX_CLIENTS) {
                            let mut b = vec![0u8; 1 << 16];
                            let _ = c.read(&mut b);
                        }
                    }
                }
                return;
            }
            if sel & 2 != 0 {
                let port = inp.u8();
                if listeners.len() < MAX_LISTENERS {
                    let mut p = uds.clone().into_os_string();
                    p.push(format!("_{port}"));
                    if let Ok(l) = UnixListener::bind(&p) {
                        let _ = l.set_nonblocking(true);
                        listeners.push(l);
                    }
                }
            }
            if sel & 4 != 0 {
                for l in &listeners {
                    while let Ok((mut a, _)) = l.accept() {
                        let _ = a.set_nonblocking(true);
                        let _ = a.write(b"x");
                        if accepted.len() < 4 * MAX_CLIENTS {
                            accepted.push(a);
                        }
                    }
                }
            }
            let mut dev = s.drv.t.device();
            if sel & 1 != 0 && dev.backend_interest(0).contains(EventSet::IN) {
                dev.process_backend(0, EventSet::IN);
            }
            if sel & 8 != 0 {
                dev.send_transport_reset();
            }
            assert!(dev.connections() <= MAX_CONNS);
        });
        if kiln_fuzz::verbose() {
            eprintln!(
                "virtio_vsock: {} connections, {} clients, {} accepted",
                s.drv.t.device().connections(),
                clients.len(),
                accepted.len()
            );
        }
    }
    drop((clients, listeners, accepted));
    let _ = std::fs::remove_dir_all(&dir);
});
