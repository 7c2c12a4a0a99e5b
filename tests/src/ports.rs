//! Host ports for tests that run in parallel, in one process or several: a free ephemeral port
//! for a service to listen on, and exclusive blocks of host ports for containers to publish on.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::fcntl::{Flock, FlockArg};

/// First port of the range blocks are taken from. Other engineers' demo boards publish on
/// 21000-22999, so blocks stay above that.
pub const BLOCK_RANGE_START: u16 = 24000;
/// Last port (inclusive) of the range blocks are taken from; below the kernel's ephemeral
/// range (32768+), so [`free_port`] never hands out a port inside a block.
pub const BLOCK_RANGE_END: u16 = 29999;

/// A port nobody listens on now, picked by the kernel (ephemeral range). Good for a service's
/// own listen address; there is a small window in which another process could take it.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind an ephemeral port");
    listener.local_addr().expect("bound listener has an address").port()
}

/// Ports in one block.
pub const BLOCK_LEN: u16 = 50;

/// An exclusive run of [`BLOCK_LEN`] consecutive host ports. Exclusivity across processes comes
/// from an advisory lock on a file per block in the temp directory, held until the block is
/// dropped; every port is also checked to be free when the block is taken.
pub struct PortBlock {
    start: u16,
    next: u16,
    _lock: Flock<File>,
}

static TAKEN: AtomicU32 = AtomicU32::new(0);

impl PortBlock {
    /// Takes a free block. Panics when no block in the range is free.
    pub fn take() -> PortBlock {
        let blocks = u32::from((BLOCK_RANGE_END - BLOCK_RANGE_START + 1) / BLOCK_LEN);
        // Different processes start at different blocks; threads of one process walk on.
        let first = std::process::id().wrapping_mul(7919).wrapping_add(TAKEN.fetch_add(1, Ordering::Relaxed));
        for i in 0..blocks {
            let index = (first.wrapping_add(i) % blocks) as u16;
            let start = BLOCK_RANGE_START + index * BLOCK_LEN;
            let path = std::env::temp_dir().join(format!("e2e-port-block-{start}.lock"));
            let Ok(file) = File::options().create(true).truncate(false).write(true).open(&path) else {
                continue;
            };
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else { continue };
            if (start..start + BLOCK_LEN).all(port_is_free) {
                return PortBlock { start, next: start, _lock: lock };
            }
        }
        panic!("no free block of {BLOCK_LEN} ports in {BLOCK_RANGE_START}-{BLOCK_RANGE_END}");
    }

    /// First port of the block.
    pub fn start(&self) -> u16 {
        self.start
    }

    /// Last port of the block (inclusive).
    pub fn end(&self) -> u16 {
        self.start + BLOCK_LEN - 1
    }

    /// The block as `START-END`, the form `--host-ports` takes.
    pub fn range(&self) -> String {
        format!("{}-{}", self.start(), self.end())
    }

    /// The next unused port of the block. Panics when the block is used up.
    pub fn next_port(&mut self) -> u16 {
        assert!(self.next <= self.end(), "port block {} is used up", self.range());
        self.next += 1;
        self.next - 1
    }
}

/// True when nothing listens on `port` (checked by binding it on all IPv4 addresses, as Docker's
/// published ports do).
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_do_not_overlap_and_hand_out_their_own_ports() {
        let mut a = PortBlock::take();
        let b = PortBlock::take();
        assert!(a.end() < b.start() || b.end() < a.start(), "{} overlaps {}", a.range(), b.range());
        let first = a.next_port();
        assert_eq!(first, a.start());
        assert_eq!(a.next_port(), first + 1);
        assert!(free_port() > BLOCK_RANGE_END);
    }
}
