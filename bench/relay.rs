//! A bare TCP relay, for `bench/scale.sh`: the floor of what any hop between a client and a device
//! costs on the machine. It copies bytes and does nothing else (no SSH, no recording, no policy), on two
//! blocking threads per connection, so that a byte is written on as soon as `read` returns it. The echo
//! round trip through it, against the same round trip straight to sshd, is how much of chaperone's echo
//! overhead is the second hop itself (two more loopback transfers, two more wake-ups) rather than work.
//!
//! Built by `bench/scale.sh` with plain `rustc -O` (std only, no crate), not part of the workspace.
//!
//! Usage: `relay TARGET_PORT`: relays to 127.0.0.1:TARGET_PORT from a free port on 127.0.0.1, which it
//! prints on a line of its own once listening.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn serve(client: TcpStream, target: u16) -> io::Result<()> {
    let device = TcpStream::connect(("127.0.0.1", target))?;
    client.set_nodelay(true)?;
    device.set_nodelay(true)?;
    let (c2, d2) = (client.try_clone()?, device.try_clone()?);
    thread::spawn(move || pump(client, device));
    thread::spawn(move || pump(d2, c2));
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(target) = args.get(1).and_then(|a| a.parse::<u16>().ok()) else {
        eprintln!("usage: relay TARGET_PORT");
        std::process::exit(2)
    };
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap_or_else(|e| {
        eprintln!("relay: cannot listen on 127.0.0.1: {e}");
        std::process::exit(1)
    });
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("{port}");
    for client in listener.incoming().flatten() {
        if let Err(e) = serve(client, target) {
            eprintln!("relay: cannot reach 127.0.0.1:{target}: {e}");
        }
    }
}
