//! The virtio-net driver as smoltcp's `phy::Device`: a receive token lends
//! the frame in its receive buffer (given back to the device when the token
//! goes), a transmit token holds a free transmit buffer.

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::virtio_net::{MAX_FRAME, Received, Rx, Tx, VirtioNet};

#[derive(Debug)]
pub struct RxToken<'a> {
    rx: &'a mut Rx,
    frame: Received,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.rx.frame(&self.frame))
    }
}

impl Drop for RxToken<'_> {
    fn drop(&mut self) {
        self.rx.release(&self.frame);
    }
}

#[derive(Debug)]
pub struct TxToken<'a> {
    tx: &'a mut Tx,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.tx.send(len, f)
    }
}

impl Device for VirtioNet {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        // A frame is only taken when its answer (ARP, ICMP) could be sent.
        if !self.tx.has_room() {
            return None;
        }
        let frame = self.rx.next()?;
        Some((
            RxToken {
                rx: &mut self.rx,
                frame,
            },
            TxToken { tx: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.tx.has_room().then_some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps
    }
}
