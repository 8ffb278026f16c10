//! Frames on the migration streams, and parsing them as hostile input.
//!
//! Every frame starts with a 16-byte little-endian header:
//!
//! ```text
//! 0       1       4         8                16
//! | kind  | zero  | length  | argument       |  then `length` payload bytes
//! ```
//!
//! A receiver checks the kind and bounds the length *before* reading the
//! payload; any violation ends the migration with an error. Control payloads
//! are bincode with a size limit; memory payloads are a range table followed by
//! the pages' bytes, every range checked against guest memory before a byte of
//! data is read.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::vmm::MachineConfig;

/// This engine's protocol version; a receiver refuses any other. 5: the
/// machine state is of format 3 (the console's absolute offset travels; network
/// cards), and the switchover's `Paused` and `Frames`. 6: streams `auto` and
/// the guest's share (`Release`). 7: the target's `Resumed` after `Running`.
pub const PROTOCOL_VERSION: u32 = 7;
pub const HEADER_LEN: usize = 16;
pub const PAGE_SIZE: u64 = 4096;
/// Largest control payload (a machine state).
pub const MAX_CONTROL_PAYLOAD: u32 = 64 << 20;
/// Largest Hello: it arrives before the sender is authenticated, so it is
/// kept small (a real one is a few KiB: the machine, its CPUID, a name).
pub const MAX_HELLO_PAYLOAD: u32 = 256 << 10;
/// Largest memory batch: its range table plus the bytes of its pages.
pub const MAX_BATCH_BYTES: u64 = 8 << 20;
/// Most ranges one memory batch may describe.
pub const MAX_BATCH_RANGES: u32 = 4096;
/// Size of one range-table entry: gpa (u64) + page count (u32) + flags (u32).
pub const RANGE_ENTRY_LEN: usize = 16;
/// Range flag: the pages are all zero; no data follows for them.
pub const RANGE_ZERO: u32 = 1;
/// Length of a migration token (see [`Token`]).
pub const TOKEN_LEN: usize = 32;

/// A secret the target's agent hands the source's over their mutually
/// authenticated API for one migration. Hello and every Join carry it, so a
/// receiver that has one accepts streams only from that sender; all zeros
/// when the receiver was started by hand without one.
#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token(pub [u8; TOKEN_LEN]);

impl Token {
    /// A fresh random token from the OS's random source.
    pub fn random() -> std::io::Result<Self> {
        let mut bytes = [0u8; TOKEN_LEN];
        crate::random::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != TOKEN_LEN * 2 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; TOKEN_LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
        }
        Some(Self(bytes))
    }

    /// Compares without an early exit, so timing does not reveal a prefix.
    pub fn matches(&self, other: &Token) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Sender → receiver, first frame on the control stream: [`Hello`].
    Hello = 1,
    /// Receiver → sender: the VM may come (argument: streams accepted).
    Accept = 2,
    /// Either way: the migration is off; payload is the reason (UTF-8).
    Abort = 3,
    /// Sender → receiver, first frame on each extra stream; argument: session id,
    /// payload: the stream's index (u32).
    Join = 4,
    /// Sender → receiver: a batch of pages (range table + data).
    Memory = 5,
    /// Sender → receiver on every stream: no more pages of round `argument` here.
    RoundEnd = 6,
    /// Receiver → sender: round `argument` is complete on every stream.
    RoundDone = 7,
    /// Sender → receiver: the complete machine state (the VM is paused).
    State = 8,
    /// Receiver → sender: the state is applied; the VM can resume here.
    Ready = 9,
    /// Sender → receiver: commit; resume the VM.
    Go = 10,
    /// Receiver → sender: the VM runs here now.
    Running = 11,
    /// Anyone → receiver, on a new connection: what became of session `argument`?
    Query = 12,
    /// Receiver → querier: argument is an [`Outcome`].
    Outcome = 13,
    /// Source's agent → receiver, on a new connection, payload the token:
    /// the sender is still coming (it waits for a slot of its host's
    /// budget); the receiver waits [`super::Timeouts::accept`] longer and
    /// echoes the frame.
    Keepalive = 14,
    /// Sender → receiver on the control stream: the source has paused its
    /// vCPUs (the switchover began); the receiver tells the network the
    /// VM's cards are here from now on.
    Paused = 15,
    /// Sender → receiver before Go: the frames the paused source's cards
    /// received meanwhile ([`crate::vmm::devices::virtio::HeldFrames`]), for
    /// the guest to get on the target.
    Frames = 16,
    /// Sender → receiver on the control stream, during pre-copy: the
    /// migration no longer keeps the guest its share of the cores (see
    /// [`super::cpu`]); the receiver raises its threads as the sender did.
    Release = 17,
    /// Receiver → sender after `Running`, once every vCPU is back in the
    /// guest: [`Resumed`], how long the target took to get there.
    Resumed = 18,
}

impl Kind {
    fn from_u8(value: u8) -> Option<Self> {
        use Kind::*;
        Some(match value {
            1 => Hello,
            2 => Accept,
            3 => Abort,
            4 => Join,
            5 => Memory,
            6 => RoundEnd,
            7 => RoundDone,
            8 => State,
            9 => Ready,
            10 => Go,
            11 => Running,
            12 => Query,
            13 => Outcome,
            14 => Keepalive,
            15 => Paused,
            16 => Frames,
            17 => Release,
            18 => Resumed,
            _ => return None,
        })
    }

    /// The largest payload a frame of this kind may carry.
    fn max_payload(self) -> u64 {
        match self {
            Kind::Hello => u64::from(MAX_HELLO_PAYLOAD),
            Kind::State => u64::from(MAX_CONTROL_PAYLOAD),
            Kind::Memory => MAX_BATCH_BYTES + u64::from(MAX_BATCH_RANGES) * RANGE_ENTRY_LEN as u64,
            Kind::Abort => 4096,
            Kind::Join => 4 + TOKEN_LEN as u64,
            Kind::Keepalive => TOKEN_LEN as u64,
            // At most MAX_HELD frames of each of 4 cards, with their lengths.
            Kind::Frames => 4 * 512 * (1518 + 16) + 64,
            Kind::Resumed => 64,
            _ => 0,
        }
    }
}

/// What became of a migration session on the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The receiver never resumed the VM and discarded it (or never had it).
    Discarded = 0,
    /// The VM runs on the receiver.
    Running = 1,
    /// The receiver holds the state and waits for Go.
    Pending = 2,
}

impl Outcome {
    pub fn from_u64(value: u64) -> Option<Self> {
        match value {
            0 => Some(Outcome::Discarded),
            1 => Some(Outcome::Running),
            2 => Some(Outcome::Pending),
            _ => None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("stream I/O failed")]
    Io(#[from] std::io::Error),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed frame header")]
    BadHeader,
    #[error("{kind:?} frame of {len} bytes exceeds its limit of {max}")]
    TooLong { kind: Kind, len: u64, max: u64 },
    #[error("expected a {expected:?} frame, got {got:?}")]
    Unexpected { expected: Kind, got: Kind },
    #[error("malformed {0:?} payload")]
    Payload(Kind, #[source] bincode::Error),
    #[error("memory range table: {0}")]
    RangeTable(String),
    #[error("peer aborted: {0}")]
    PeerAborted(String),
    #[error("the receiver took {taken} streams of the {offered} offered")]
    Streams { taken: u64, offered: u32 },
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub len: u32,
    pub arg: u64,
}

impl Header {
    pub fn new(kind: Kind, len: u32, arg: u64) -> Self {
        Self { kind, len, arg }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0] = self.kind as u8;
        bytes[4..8].copy_from_slice(&self.len.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.arg.to_le_bytes());
        bytes
    }

    /// Parses and bounds-checks a header.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, ProtocolError> {
        let kind = Kind::from_u8(bytes[0]).ok_or(ProtocolError::UnknownKind(bytes[0]))?;
        if bytes[1..4] != [0, 0, 0] {
            return Err(ProtocolError::BadHeader);
        }
        let len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        let arg = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let max = kind.max_payload();
        if u64::from(len) > max {
            return Err(ProtocolError::TooLong {
                kind,
                len: u64::from(len),
                max,
            });
        }
        Ok(Self { kind, len, arg })
    }
}

pub fn read_header(stream: &mut impl Read) -> Result<Header, ProtocolError> {
    let mut bytes = [0u8; HEADER_LEN];
    stream.read_exact(&mut bytes)?;
    Header::decode(&bytes)
}

/// Reads a frame's payload (its length was bounded by [`Header::decode`]).
pub fn read_payload(stream: &mut impl Read, header: &Header) -> Result<Vec<u8>, ProtocolError> {
    let mut payload = vec![0u8; header.len as usize];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

/// Reads the next frame, which must be of kind `expected` (an Abort is turned
/// into [`ProtocolError::PeerAborted`]).
pub fn expect(stream: &mut impl Read, expected: Kind) -> Result<(Header, Vec<u8>), ProtocolError> {
    let header = read_header(stream)?;
    let payload = read_payload(stream, &header)?;
    if header.kind == Kind::Abort {
        return Err(ProtocolError::PeerAborted(
            String::from_utf8_lossy(&payload).into_owned(),
        ));
    }
    if header.kind != expected {
        return Err(ProtocolError::Unexpected {
            expected,
            got: header.kind,
        });
    }
    Ok((header, payload))
}

pub fn write_frame(stream: &mut impl Write, kind: Kind, arg: u64, payload: &[u8]) -> Result<(), ProtocolError> {
    let header = Header::new(kind, payload.len() as u32, arg);
    if payload.is_empty() {
        stream.write_all(&header.encode())?;
    } else {
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&header.encode());
        frame.extend_from_slice(payload);
        stream.write_all(&frame)?;
    }
    stream.flush()?;
    Ok(())
}

/// Decodes a bincode control payload with a size limit.
pub fn decode<T: serde::de::DeserializeOwned>(kind: Kind, payload: &[u8]) -> Result<T, ProtocolError> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(u64::from(MAX_CONTROL_PAYLOAD))
        .deserialize(payload)
        .map_err(|e| ProtocolError::Payload(kind, e))
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .serialize(value)
        .expect("in-memory serialisation of plain data cannot fail")
}

/// The target's side of the switchover, in its own clock: the sender adds it
/// to its own to tell how long the guest stood still.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    /// From Go's arrival to `Running` written (the commit).
    pub commit_ns: u64,
    /// From `Running` written to the last vCPU entering the guest.
    pub start_ns: u64,
}

/// The first frame: who is coming and what it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// Random per migration; extra streams and queries name it.
    pub session: u64,
    /// The VM's name, for logs and the receiver's status.
    pub vm_name: String,
    pub machine: MachineConfig,
    /// CPUID of the source's first vCPU: the features the guest may be using.
    pub cpuid: Vec<CpuidLeaf>,
    /// Size of the source's XSAVE area in bytes.
    pub xsave_size: u32,
    /// Total number of streams (the control stream included) the sender
    /// opens, or with `streams_auto` the most it offers; Accept's argument
    /// says how many the receiver takes.
    pub streams: u32,
    /// The receiver may take fewer streams, as its free cores say.
    pub streams_auto: bool,
    /// The source machine's boot id: a receiver with the same one shares
    /// its cores ([`super::cpu`]).
    pub boot_id: String,
    /// The share of a vCPU's time a guest keeps during pre-copy: the
    /// receiver's threads take the same niceness.
    pub guest_share: u8,
    /// The migration's token, checked by a receiver that was given one.
    pub token: Token,
    /// How the target announces the VM's cards once it runs there.
    pub announce: crate::vmm::AnnounceOptions,
}

/// One CPUID leaf as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidLeaf {
    pub function: u32,
    pub index: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// One entry of a memory batch's range table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub gpa: u64,
    pub pages: u32,
    pub flags: u32,
}

impl Range {
    pub fn bytes(&self) -> u64 {
        u64::from(self.pages) * PAGE_SIZE
    }

    /// Bytes of page data that follow the table for this range.
    pub fn data_bytes(&self) -> u64 {
        if self.flags & RANGE_ZERO != 0 { 0 } else { self.bytes() }
    }
}

/// Encodes a memory batch's range table (count first).
pub fn encode_ranges(ranges: &[Range]) -> Vec<u8> {
    let mut table = Vec::with_capacity(4 + ranges.len() * RANGE_ENTRY_LEN);
    table.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for range in ranges {
        table.extend_from_slice(&range.gpa.to_le_bytes());
        table.extend_from_slice(&range.pages.to_le_bytes());
        table.extend_from_slice(&range.flags.to_le_bytes());
    }
    table
}

/// Parses and validates a range table at the start of a memory payload of
/// `payload_len` bytes. `in_memory(gpa, len)` says whether a range lies in
/// guest RAM. Returns the ranges and the table's length.
pub fn decode_ranges(
    table: &[u8],
    payload_len: u64,
    in_memory: impl Fn(u64, u64) -> bool,
) -> Result<(Vec<Range>, usize), ProtocolError> {
    let bad = |why: String| ProtocolError::RangeTable(why);
    if table.len() < 4 {
        return Err(bad("shorter than its count".into()));
    }
    let count = u32::from_le_bytes(table[..4].try_into().expect("4 bytes"));
    if count == 0 || count > MAX_BATCH_RANGES {
        return Err(bad(format!("{count} ranges")));
    }
    let table_len = 4 + count as usize * RANGE_ENTRY_LEN;
    if table.len() < table_len {
        return Err(bad(format!(
            "{count} ranges need {table_len} bytes, have {}",
            table.len()
        )));
    }
    let mut ranges = Vec::with_capacity(count as usize);
    let mut data = 0u64;
    for entry in table[4..table_len].chunks_exact(RANGE_ENTRY_LEN) {
        let range = Range {
            gpa: u64::from_le_bytes(entry[0..8].try_into().expect("8 bytes")),
            pages: u32::from_le_bytes(entry[8..12].try_into().expect("4 bytes")),
            flags: u32::from_le_bytes(entry[12..16].try_into().expect("4 bytes")),
        };
        if !range.gpa.is_multiple_of(PAGE_SIZE) {
            return Err(bad(format!("range at {:#x} is not page-aligned", range.gpa)));
        }
        if range.pages == 0 || range.bytes() > MAX_BATCH_BYTES {
            return Err(bad(format!("range at {:#x} has {} pages", range.gpa, range.pages)));
        }
        if range.flags & !RANGE_ZERO != 0 {
            return Err(bad(format!("unknown range flags {:#x}", range.flags)));
        }
        if range.gpa.checked_add(range.bytes()).is_none() || !in_memory(range.gpa, range.bytes()) {
            return Err(bad(format!(
                "range {:#x}+{:#x} lies outside guest memory",
                range.gpa,
                range.bytes()
            )));
        }
        data += range.data_bytes();
        ranges.push(range);
    }
    if data > MAX_BATCH_BYTES || table_len as u64 + data != payload_len {
        return Err(bad(format!(
            "ranges carry {data} bytes but the frame has {}",
            payload_len.saturating_sub(table_len as u64)
        )));
    }
    Ok((ranges, table_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_are_bounded() {
        let header = Header::new(Kind::Memory, 4096, 7);
        assert_eq!(Header::decode(&header.encode()).unwrap(), header);
        let mut bad = header.encode();
        bad[0] = 200;
        assert!(matches!(Header::decode(&bad), Err(ProtocolError::UnknownKind(200))));
        let mut long = Header::new(Kind::Go, 1, 0).encode();
        long[4] = 1;
        assert!(matches!(Header::decode(&long), Err(ProtocolError::TooLong { .. })));
        let mut padding = header.encode();
        padding[2] = 1;
        assert!(matches!(Header::decode(&padding), Err(ProtocolError::BadHeader)));
    }

    #[test]
    fn hello_round_trips_and_bounds_its_strings() {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            session: 7,
            vm_name: "vm1".into(),
            machine: MachineConfig {
                memory_bytes: 1 << 30,
                vcpus: 2,
                cpuid_masks: Vec::new(),
                disks: Vec::new(),
                nics: Vec::new(),
            },
            cpuid: vec![CpuidLeaf {
                function: 1,
                index: 0,
                eax: 1,
                ebx: 2,
                ecx: 3,
                edx: 4,
            }],
            xsave_size: 4096,
            streams: 2,
            streams_auto: false,
            boot_id: String::new(),
            guest_share: 95,
            token: Token::default(),
            announce: Default::default(),
        };
        let bytes = encode(&hello);
        assert_eq!(decode::<Hello>(Kind::Hello, &bytes).unwrap(), hello);
        // A string length far beyond the payload is an error, not an allocation.
        let mut lying = bytes.clone();
        lying[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Hello>(Kind::Hello, &lying).is_err());
        assert!(decode::<Hello>(Kind::Hello, &bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn range_tables_are_checked_against_memory() {
        let in_memory = |gpa: u64, len: u64| gpa + len <= 1 << 30;
        let ranges = [
            Range {
                gpa: 0x1000,
                pages: 2,
                flags: 0,
            },
            Range {
                gpa: 0x10_0000,
                pages: 16,
                flags: RANGE_ZERO,
            },
        ];
        let table = encode_ranges(&ranges);
        let (parsed, len) = decode_ranges(&table, table.len() as u64 + 2 * 4096, in_memory).unwrap();
        assert_eq!(parsed, ranges);
        assert_eq!(len, table.len());

        // The frame must carry exactly the data its ranges announce.
        assert!(decode_ranges(&table, table.len() as u64 + 4096, in_memory).is_err());
        let outside = encode_ranges(&[Range {
            gpa: (1 << 30) - 4096,
            pages: 2,
            flags: 0,
        }]);
        assert!(decode_ranges(&outside, outside.len() as u64 + 8192, in_memory).is_err());
        let unaligned = encode_ranges(&[Range {
            gpa: 0x1001,
            pages: 1,
            flags: 0,
        }]);
        assert!(decode_ranges(&unaligned, unaligned.len() as u64 + 4096, in_memory).is_err());
        let wrapping = encode_ranges(&[Range {
            gpa: !0xfff,
            pages: 16,
            flags: 0,
        }]);
        assert!(decode_ranges(&wrapping, wrapping.len() as u64 + 65536, |_, _| true).is_err());
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn header_decoding_never_panics(bytes in proptest::array::uniform16(any::<u8>())) {
                let _ = Header::decode(&bytes);
            }

            #[test]
            fn range_table_decoding_never_panics(
                table in proptest::collection::vec(any::<u8>(), 0..512),
                payload_len in any::<u64>(),
            ) {
                let _ = decode_ranges(&table, payload_len, |gpa, len| gpa.checked_add(len).is_some_and(|e| e <= 1 << 32));
            }

            #[test]
            fn valid_range_tables_round_trip(
                entries in proptest::collection::vec((0u64..(1 << 18), 1u32..64, any::<bool>()), 1..64)
            ) {
                let ranges: Vec<Range> = entries
                    .iter()
                    .map(|&(page, pages, zero)| Range { gpa: page * PAGE_SIZE, pages, flags: if zero { RANGE_ZERO } else { 0 } })
                    .collect();
                let data: u64 = ranges.iter().map(Range::data_bytes).sum();
                prop_assume!(data <= MAX_BATCH_BYTES);
                let table = encode_ranges(&ranges);
                let (parsed, len) = decode_ranges(&table, table.len() as u64 + data, |_, _| true).unwrap();
                prop_assert_eq!(parsed, ranges);
                prop_assert_eq!(len, table.len());
            }

            #[test]
            fn control_payload_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = decode::<Hello>(Kind::Hello, &bytes);
                let _ = crate::vmm::VmState::decode(&bytes);
            }
        }
    }
}
