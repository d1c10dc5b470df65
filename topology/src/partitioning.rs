//! Where a keyed record lands (semantics §1 "Partitioning"). The upstream producers (Java clients,
//! aiokafka) place keys with murmur2; librdkafka's default partitioner hashes them with CRC-32.
//! If WorldService and the Gateways use different ones, a world's activations and ACKs land on
//! different partition numbers and every run looks like missing ACKs plus orphan ACKs, so each
//! tracked record's placement is checked against both ([`Placements`]).

use serde::Serialize;

use crate::side::{PerSide, Side};

/// The partitioners a key's placement is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// Kafka's Java default (and aiokafka's, librdkafka's `murmur2_random` for keyed records).
    Murmur2,
    /// librdkafka's default (`consistent_random` for keyed records).
    Crc32,
}

impl Partitioner {
    pub const ALL: [Partitioner; 2] = [Partitioner::Murmur2, Partitioner::Crc32];

    pub fn as_str(self) -> &'static str {
        match self {
            Partitioner::Murmur2 => "murmur2",
            Partitioner::Crc32 => "crc32",
        }
    }

    /// The partition this partitioner gives `key` among `partitions`.
    pub fn partition(self, key: &[u8], partitions: i32) -> i32 {
        let n = partitions.max(1) as u32;
        match self {
            Partitioner::Murmur2 => ((murmur2(key) & 0x7fff_ffff) % n) as i32,
            Partitioner::Crc32 => (crc32(key) % n) as i32,
        }
    }
}

/// Kafka's `Utils.murmur2` (seed 0x9747b28c), as Java clients hash record keys.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// CRC-32 (IEEE 802.3, zlib's), as librdkafka's default partitioner hashes record keys.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Per input topic, how many tracked records each partitioner would have placed elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placements {
    pub checked: PerSide<u64>,
    /// Misplaced under murmur2 and under CRC-32, by side.
    pub misplaced: PerSide<[u64; 2]>,
}

impl Placements {
    /// Checks one tracked record of `side` with `key` on `partition` of `partitions`; returns
    /// the partitioners that would have placed it elsewhere.
    pub fn check(&mut self, side: Side, key: &[u8], partition: i32, partitions: i32) -> [bool; 2] {
        self.checked[side] += 1;
        let misplaced = Partitioner::ALL.map(|p| p.partition(key, partitions) != partition);
        for (i, m) in misplaced.iter().enumerate() {
            self.misplaced[side][i] += u64::from(*m);
        }
        misplaced
    }

    /// The partitioners every checked record of `side` agrees with (both, with one partition
    /// or no record; none, with a custom partitioner or records placed by hand).
    pub fn consistent(&self, side: Side) -> Vec<Partitioner> {
        Partitioner::ALL
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.misplaced[side][*i] == 0)
            .map(|(_, p)| p)
            .collect()
    }

    /// Whether the two topics follow different partitioners: each side agrees with some
    /// partitioner, and no partitioner agrees with both. Then a world's records of the two
    /// topics land on different partitions and the join is broken.
    pub fn disagree(&self) -> bool {
        let (a, k) = (
            self.consistent(Side::Activation),
            self.consistent(Side::Ack),
        );
        !a.is_empty() && !k.is_empty() && !a.iter().any(|p| k.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known values: Kafka's `Utils.murmur2` (as Java clients compute it) and zlib's `crc32`.
    #[test]
    fn hashes_match_the_clients() {
        for (key, java) in [
            ("1", -1_993_445_489),
            ("12", 126_087_238),
            ("123", -267_702_483),
            ("1234", -1_614_185_708),
            ("12345", -1_188_365_604),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, java, "murmur2({key:?})");
        }
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn placements_tell_disagreeing_partitioners_apart() {
        let mut p = Placements::default();
        for world in ["w1", "w2", "w3", "w4", "w5", "w6"] {
            let key = world.as_bytes();
            p.check(
                Side::Activation,
                key,
                Partitioner::Murmur2.partition(key, 6),
                6,
            );
            p.check(Side::Ack, key, Partitioner::Crc32.partition(key, 6), 6);
        }
        assert_eq!(p.consistent(Side::Activation), vec![Partitioner::Murmur2]);
        assert_eq!(p.consistent(Side::Ack), vec![Partitioner::Crc32]);
        assert!(p.disagree());
        let mut same = Placements::default();
        for world in ["w1", "w2", "w3"] {
            let key = world.as_bytes();
            for side in Side::BOTH {
                same.check(side, key, Partitioner::Murmur2.partition(key, 6), 6);
            }
        }
        assert!(!same.disagree());
        assert!(!Placements::default().disagree(), "nothing checked yet");
    }
}
