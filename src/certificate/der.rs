//! A minimal reader for the ASN.1 encodings in certificates, private keys and PKCS#12
//! files.
//!
//! It reads DER and the parts of BER that PKCS#12 writers use: indefinite lengths and
//! constructed (chunked) OCTET STRINGs, which some Windows and Java exports contain.

use std::fmt::Write;

pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const OID: u8 = 0x06;
pub(crate) const SEQUENCE: u8 = 0x30;
/// `[0]` with constructed contents, as EXPLICIT tagging produces.
pub(crate) const CONTEXT_0: u8 = 0xa0;
/// `[0]` with primitive contents, an IMPLICIT OCTET STRING.
pub(crate) const CONTEXT_0_PRIMITIVE: u8 = 0x80;

/// The bit that marks constructed contents in an identifier octet.
const CONSTRUCTED: u8 = 0x20;

/// Nesting limit for indefinite-length and chunked elements. PKCS#12 files nest about
/// ten levels deep.
const MAX_DEPTH: usize = 32;

/// The reason the input is not valid ASN.1 of the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

impl Malformed {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Malformed(what.into())
    }
}

pub(crate) type Result<T> = std::result::Result<T, Malformed>;

/// One element: its identifier octet and its contents.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Element<'a> {
    pub(crate) tag: u8,
    pub(crate) contents: &'a [u8],
    /// The whole encoding: identifier, length and contents.
    pub(crate) encoded: &'a [u8],
}

impl<'a> Element<'a> {
    /// Returns a reader over the children of a constructed element.
    pub(crate) fn children(&self) -> Reader<'a> {
        Reader::new(self.contents)
    }

    /// Reads the contents of an INTEGER that must be non-negative and fit in a `u32`.
    pub(crate) fn u32(&self) -> Result<u32> {
        let too_large = || Malformed::new("an INTEGER is negative or larger than 2^32 - 1");
        let digits = match self.contents {
            [] => return Err(Malformed::new("an INTEGER has no contents")),
            [first, ..] if first & 0x80 != 0 => return Err(too_large()),
            [0, rest @ ..] => rest,
            all => all,
        };
        if digits.len() > 4 {
            return Err(too_large());
        }
        Ok(digits.iter().fold(0, |n, b| (n << 8) | u32::from(*b)))
    }

    /// Reads the element as an OCTET STRING, joining the chunks of a constructed one.
    /// `tag` is the expected identifier with the constructed bit clear.
    pub(crate) fn octets(&self, tag: u8) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        collect_octets(*self, tag, &mut out, 0)?;
        Ok(out)
    }
}

fn collect_octets(element: Element<'_>, tag: u8, out: &mut Vec<u8>, depth: usize) -> Result<()> {
    if element.tag == tag {
        out.extend_from_slice(element.contents);
        return Ok(());
    }
    if element.tag != tag | CONSTRUCTED {
        return Err(unexpected(tag, element.tag));
    }
    if depth >= MAX_DEPTH {
        return Err(Malformed::new("OCTET STRING chunks nest too deeply"));
    }
    let mut chunks = element.children();
    while let Some(chunk) = chunks.next()? {
        collect_octets(chunk, OCTET_STRING, out, depth + 1)?;
    }
    Ok(())
}

fn unexpected(expected: u8, found: u8) -> Malformed {
    Malformed(format!(
        "expected ASN.1 tag 0x{expected:02x}, found 0x{found:02x}"
    ))
}

/// A cursor over a sequence of elements.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Reader { input }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    /// Reads the next element, or returns `None` at the end of the input.
    pub(crate) fn next(&mut self) -> Result<Option<Element<'a>>> {
        if self.input.is_empty() {
            return Ok(None);
        }
        let (element, rest) = read_element(self.input, 0)?;
        self.input = rest;
        Ok(Some(element))
    }

    /// Reads the next element, which must exist and have `tag`.
    pub(crate) fn expect(&mut self, tag: u8) -> Result<Element<'a>> {
        match self.next()? {
            Some(element) if element.tag == tag => Ok(element),
            Some(element) => Err(unexpected(tag, element.tag)),
            None => Err(Malformed(format!(
                "expected ASN.1 tag 0x{tag:02x}, found the end of the data"
            ))),
        }
    }

    /// Reads the next element if it has `tag`.
    pub(crate) fn optional(&mut self, tag: u8) -> Result<Option<Element<'a>>> {
        if self.input.first() == Some(&tag) {
            self.expect(tag).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Reads an OBJECT IDENTIFIER in dotted form, such as `1.2.840.113549.1.1.1`.
    pub(crate) fn oid(&mut self) -> Result<String> {
        oid_to_string(self.expect(OID)?.contents)
    }

    /// Reads a non-negative INTEGER that fits in a `u32`.
    pub(crate) fn u32(&mut self) -> Result<u32> {
        self.expect(INTEGER)?.u32()
    }

    /// Fails unless every element has been read.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(Malformed::new("unexpected data after the last element"))
        }
    }
}

/// Reads one element from `input` and returns it with the bytes after it.
fn read_element(input: &[u8], depth: usize) -> Result<(Element<'_>, &[u8])> {
    let truncated = || Malformed::new("the data ends inside an element");
    let (&tag, rest) = input.split_first().ok_or_else(truncated)?;
    if tag & 0x1f == 0x1f {
        return Err(Malformed::new("multi-byte ASN.1 tags are not used here"));
    }
    let (&first, rest) = rest.split_first().ok_or_else(truncated)?;
    if first == 0x80 {
        return read_indefinite(tag, input, rest, depth);
    }
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count > std::mem::size_of::<u32>() || rest.len() < count {
            return Err(Malformed::new("an element length is invalid"));
        }
        let (digits, rest) = rest.split_at(count);
        let len = digits
            .iter()
            .fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return Err(truncated());
    }
    let (contents, rest) = rest.split_at(len);
    let encoded = &input[..input.len() - rest.len()];
    Ok((
        Element {
            tag,
            contents,
            encoded,
        },
        rest,
    ))
}

/// Reads a BER element of indefinite length: its children up to an end-of-contents
/// marker (`00 00`). `element` starts at the identifier octet and `input` after the
/// length octet.
fn read_indefinite<'a>(
    tag: u8,
    element: &'a [u8],
    input: &'a [u8],
    depth: usize,
) -> Result<(Element<'a>, &'a [u8])> {
    if tag & CONSTRUCTED == 0 {
        return Err(Malformed::new(
            "a primitive element has an indefinite length",
        ));
    }
    if depth >= MAX_DEPTH {
        return Err(Malformed::new("indefinite-length elements nest too deeply"));
    }
    let mut rest = input;
    loop {
        if let [0, 0, after @ ..] = rest {
            let found = Element {
                tag,
                contents: &input[..input.len() - rest.len()],
                encoded: &element[..element.len() - after.len()],
            };
            return Ok((found, after));
        }
        if rest.is_empty() {
            return Err(Malformed::new(
                "an indefinite-length element has no end marker",
            ));
        }
        rest = read_element(rest, depth + 1)?.1;
    }
}

/// Converts the contents of an OBJECT IDENTIFIER to dotted form.
fn oid_to_string(contents: &[u8]) -> Result<String> {
    let invalid = || Malformed::new("an OBJECT IDENTIFIER is invalid");
    if contents.is_empty() || contents.last().is_some_and(|b| b & 0x80 != 0) {
        return Err(invalid());
    }
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &byte in contents {
        if value > u64::MAX >> 7 {
            return Err(invalid());
        }
        value = (value << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            arcs.push(value);
            value = 0;
        }
    }
    // The first subidentifier packs the first two arcs as 40 * first + second.
    let (first, second) = match arcs[0] {
        n if n < 40 => (0, n),
        n if n < 80 => (1, n - 40),
        n => (2, n - 80),
    };
    let mut dotted = format!("{first}.{second}");
    for arc in &arcs[1..] {
        // Writing to a String cannot fail.
        let _ = write!(dotted, ".{arc}");
    }
    Ok(dotted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_decodes_to_dotted_form() {
        let rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
        assert_eq!(oid_to_string(&rsa).unwrap(), "1.2.840.113549.1.1.1");
        let aes256 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];
        assert_eq!(oid_to_string(&aes256).unwrap(), "2.16.840.1.101.3.4.1.42");
        assert!(oid_to_string(&[0x2a, 0x86]).is_err());
        assert!(oid_to_string(&[]).is_err());
    }

    #[test]
    fn definite_and_long_form_lengths() {
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7; 0x80]);
        let mut reader = Reader::new(&long);
        let element = reader.expect(OCTET_STRING).unwrap();
        assert_eq!(element.contents.len(), 0x80);
        assert!(reader.is_empty());
        assert!(Reader::new(&[0x04, 0x82, 0x01]).next().is_err());
        assert!(Reader::new(&[0x04, 0x05, 1, 2]).next().is_err());
    }

    #[test]
    fn indefinite_length_and_chunked_octets() {
        // A constructed OCTET STRING of indefinite length holding "ab" and "c".
        let ber = [
            0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0x00, 0x00, 0x02, 0x01, 0x05,
        ];
        let mut reader = Reader::new(&ber);
        let element = reader.next().unwrap().unwrap();
        assert_eq!(element.octets(OCTET_STRING).unwrap(), b"abc");
        assert_eq!(reader.u32().unwrap(), 5);
        reader.finish().unwrap();
        // Without the end marker.
        assert!(Reader::new(&ber[..9]).next().is_err());
    }

    #[test]
    fn integers_must_be_small_and_non_negative() {
        assert_eq!(Reader::new(&[0x02, 0x02, 0x00, 0x80]).u32().unwrap(), 128);
        assert_eq!(
            Reader::new(&[0x02, 0x05, 0x00, 0xff, 0xff, 0xff, 0xff])
                .u32()
                .unwrap(),
            u32::MAX
        );
        assert!(Reader::new(&[0x02, 0x01, 0x80]).u32().is_err());
        assert!(Reader::new(&[0x02, 0x05, 1, 0, 0, 0, 0]).u32().is_err());
        assert!(Reader::new(&[0x02, 0x00]).u32().is_err());
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let mut ber = Vec::new();
        for _ in 0..(MAX_DEPTH + 2) {
            ber.extend([0x30, 0x80]);
        }
        for _ in 0..(MAX_DEPTH + 2) {
            ber.extend([0x00, 0x00]);
        }
        assert!(Reader::new(&ber).next().is_err());
    }
}
