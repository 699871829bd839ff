//! Compact encodings of the rings: LEB128 varints, zigzag for signed deltas, and
//! length-prefixed strings. A [`Reader`] never panics: truncated or corrupt input ends the
//! read with `None`.

/// Appends `v` as an unsigned LEB128 varint (1 byte below 128, at most 10).
pub fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends `v` zigzag-encoded (small magnitudes of either sign stay short).
pub fn put_ivarint(buf: &mut Vec<u8>, v: i64) {
    put_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends a length-prefixed string, cut to `max` bytes at a character boundary.
pub fn put_str(buf: &mut Vec<u8>, s: &str, max: usize) {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_uvarint(buf, end as u64);
    buf.extend_from_slice(&s.as_bytes()[..end]);
}

/// Reads what the `put_*` functions wrote.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn uvarint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            if shift >= 64 {
                return None;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
            shift += 7;
        }
    }

    pub fn ivarint(&mut self) -> Option<i64> {
        let u = self.uvarint()?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    pub fn str(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.uvarint()?).ok()?;
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        std::str::from_utf8(s).ok()
    }
}

/// Fixed-point value of a metric sample: thousandths, saturating (metrics are kept at a
/// resolution of 0.001 of their unit; non-finite values are not recorded).
pub fn quantize(v: f64) -> Option<i64> {
    if !v.is_finite() {
        return None;
    }
    let q = (v * 1000.0).round();
    Some(q.clamp(i64::MIN as f64, i64::MAX as f64) as i64)
}

pub fn dequantize(q: i64) -> f64 {
    q as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(u in any::<u64>(), i in any::<i64>(), s in ".{0,40}") {
            let mut b = Vec::new();
            put_uvarint(&mut b, u);
            put_ivarint(&mut b, i);
            put_str(&mut b, &s, 1000);
            b.push(7);
            let mut r = Reader::new(&b);
            prop_assert_eq!(r.uvarint(), Some(u));
            prop_assert_eq!(r.ivarint(), Some(i));
            prop_assert_eq!(r.str(), Some(s.as_str()));
            prop_assert_eq!(r.u8(), Some(7));
            prop_assert!(r.at_end());
            prop_assert_eq!(r.u8(), None);
        }

        #[test]
        fn reader_never_panics_on_garbage(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&b);
            for _ in 0..80 {
                let _ = r.uvarint();
                let _ = r.ivarint();
                let _ = r.str();
            }
        }

        #[test]
        fn quantize_keeps_thousandths(v in -1e12f64..1e12) {
            let q = quantize(v).unwrap();
            prop_assert!((dequantize(q) - v).abs() <= 0.0005 + v.abs() * 1e-15);
        }
    }

    #[test]
    fn small_deltas_are_one_byte_and_strings_are_cut_at_char_boundaries() {
        let mut b = Vec::new();
        put_ivarint(&mut b, -63);
        assert_eq!(b.len(), 1);
        b.clear();
        put_str(&mut b, "héllo", 2);
        assert_eq!(Reader::new(&b).str(), Some("h"));
        assert_eq!(quantize(f64::NAN), None);
    }
}
