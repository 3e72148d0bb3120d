//! The canonical JSON text of a record, written directly: object keys
//! sorted at every level, compact — exactly what `serde_json::to_string(&
//! serde_json::to_value(x))` produces (serde_json's `Map` is a `BTreeMap`),
//! without building the `Value` tree first. Sealing a record is on every
//! request's path; the tree cost a `String` and a map node per field.
//!
//! Equivalence with the `Value` route is what the hash chain depends on; it
//! is tested below on records with every field set and on random records.

use serde::ser::{self, Serialize};

/// The canonical text of `value` (sorted keys, compact), or an error for
/// what JSON cannot represent (a map key that is not a string).
pub fn to_canonical_string<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    let mut out = Vec::with_capacity(1024);
    value.serialize(Writer { out: &mut out })?;
    // Only ever written from `str`s and ASCII.
    String::from_utf8(out).map_err(|_| Error("canonical text is not UTF-8".into()))
}

/// What cannot be written as canonical JSON.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// Writes one value into `out`.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Most strings (every field name, most values) need no escaping: copy
    // them. Anything else goes through serde_json's own escaping, which the
    // `Value` route uses too.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn push_json<T: Serialize>(out: &mut Vec<u8>, v: T) -> Result<(), Error> {
    serde_json::to_writer(&mut *out, &v).map_err(|e| Error(e.to_string()))
}

/// An object being written. Entries are written in place as they come —
/// `"key":value` — and their keys and value ranges remembered; when the
/// object ends, entries whose keys arrived already sorted (the common case:
/// structs declared in key order, and small maps) need nothing more, and
/// otherwise the object's text is rebuilt from the ranges in key order. A
/// key given twice keeps its last value, as a `BTreeMap` insert does.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    /// Where the object's `{` is in `out`.
    start: usize,
    /// Key, and the range of its value's text in `out`.
    entries: Vec<(Key, usize, usize)>,
    /// For `serialize_key` + `serialize_value`.
    pending_key: Option<String>,
    /// `{"Variant":{…}}` for struct variants.
    variant: bool,
}

/// A field name (static) or a map key.
enum Key {
    Static(&'static str),
    Owned(String),
}

impl Key {
    fn as_str(&self) -> &str {
        match self {
            Key::Static(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl Object<'_> {
    fn entry<T: Serialize + ?Sized>(&mut self, key: Key, value: &T) -> Result<(), Error> {
        if !self.entries.is_empty() {
            self.out.push(b',');
        }
        push_str(self.out, key.as_str());
        self.out.push(b':');
        let from = self.out.len();
        value.serialize(Writer { out: self.out })?;
        self.entries.push((key, from, self.out.len()));
        Ok(())
    }

    fn finish(mut self) {
        let sorted = self.entries.windows(2).all(|w| w[0].0.as_str() < w[1].0.as_str());
        if !sorted {
            // Rebuild: stable sort by key, the last of equal keys wins.
            let text = self.out.split_off(self.start);
            let base = self.start;
            self.entries.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            self.out.push(b'{');
            let mut first = true;
            for (i, (k, from, to)) in self.entries.iter().enumerate() {
                if self
                    .entries
                    .get(i + 1)
                    .is_some_and(|next| next.0.as_str() == k.as_str())
                {
                    continue;
                }
                if !first {
                    self.out.push(b',');
                }
                first = false;
                push_str(self.out, k.as_str());
                self.out.push(b':');
                self.out.extend_from_slice(&text[from - base..to - base]);
            }
        }
        self.out.push(b'}');
        if self.variant {
            self.out.push(b'}');
        }
    }
}

/// Serialises a map key to the string JSON requires.
struct KeyWriter;

impl ser::Serializer for KeyWriter {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = ser::Impossible<String, Error>;
    type SerializeTuple = ser::Impossible<String, Error>;
    type SerializeTupleStruct = ser::Impossible<String, Error>;
    type SerializeTupleVariant = ser::Impossible<String, Error>;
    type SerializeMap = ser::Impossible<String, Error>;
    type SerializeStruct = ser::Impossible<String, Error>;
    type SerializeStructVariant = ser::Impossible<String, Error>;

    fn serialize_str(self, v: &str) -> Result<String, Error> {
        Ok(v.to_owned())
    }
    fn serialize_char(self, v: char) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<String, Error> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<String, Error> {
        value.serialize(self)
    }
    // serde_json's `Value` accepts integer and bool keys as their text.
    fn serialize_bool(self, v: bool) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i8(self, v: i8) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_f32(self, _: f32) -> Result<String, Error> {
        Err(Error("float map key".into()))
    }
    fn serialize_f64(self, _: f64) -> Result<String, Error> {
        Err(Error("float map key".into()))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<String, Error> {
        Err(Error("bytes map key".into()))
    }
    fn serialize_none(self) -> Result<String, Error> {
        Err(Error("null map key".into()))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Error> {
        Err(Error("option map key".into()))
    }
    fn serialize_unit(self) -> Result<String, Error> {
        Err(Error("unit map key".into()))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String, Error> {
        Err(Error("unit struct map key".into()))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Error> {
        Err(Error("enum map key".into()))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(Error("sequence map key".into()))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(Error("tuple map key".into()))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Error> {
        Err(Error("tuple map key".into()))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(Error("tuple map key".into()))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(Error("map map key".into()))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Err(Error("struct map key".into()))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(Error("struct map key".into()))
    }
}

/// A sequence (arrays keep their order).
struct Seq<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// `{"Variant":[…]}` for tuple variants.
    variant: bool,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Writer { out: self.out })
    }
    fn end(self) {
        self.out.push(b']');
        if self.variant {
            self.out.push(b'}');
        }
    }
}

impl ser::SerializeSeq for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        Seq::end(self);
        Ok(())
    }
}

impl ser::SerializeTuple for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        Seq::end(self);
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        Seq::end(self);
        Ok(())
    }
}

impl ser::SerializeTupleVariant for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        Seq::end(self);
        Ok(())
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.pending_key = Some(key.serialize(KeyWriter)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| Error("map value without a key".into()))?;
        self.entry(Key::Owned(key), value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        self.entry(Key::Static(key), value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeStructVariant for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        self.entry(Key::Static(key), value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish();
        Ok(())
    }
}

impl<'a> ser::Serializer for Writer<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        push_json(self.out, v)
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        push_json(self.out, v)
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        push_json(self.out, v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        push_json(self.out, v)
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        push_json(self.out, v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        push_json(self.out, v)
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        push_json(self.out, v)
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        push_json(self.out, v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        push_json(self.out, v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        push_json(self.out, v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        // The `Value` route widens f32 to f64 and turns non-finite into null.
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        if v.is_finite() {
            push_json(self.out, v)
        } else {
            self.out.extend_from_slice(b"null");
            Ok(())
        }
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        let mut b = [0u8; 4];
        push_str(self.out, v.encode_utf8(&mut b));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        push_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        // As the `Value` route: an array of numbers.
        let mut s = Seq {
            out: self.out,
            first: true,
            variant: false,
        };
        s.out.push(b'[');
        for b in v {
            s.element(b)?;
        }
        s.end();
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), Error> {
        push_str(self.out, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.out.push(b'{');
        push_str(self.out, variant);
        self.out.push(b':');
        value.serialize(Writer { out: self.out })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>, Error> {
        self.out.push(b'[');
        Ok(Seq {
            out: self.out,
            first: true,
            variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Seq<'a>, Error> {
        self.out.push(b'{');
        push_str(self.out, variant);
        self.out.extend_from_slice(b":[");
        Ok(Seq {
            out: self.out,
            first: true,
            variant: true,
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Object<'a>, Error> {
        let start = self.out.len();
        self.out.push(b'{');
        Ok(Object {
            out: self.out,
            start,
            entries: Vec::with_capacity(len.unwrap_or(16)),
            pending_key: None,
            variant: false,
        })
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Object<'a>, Error> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Object<'a>, Error> {
        self.out.push(b'{');
        push_str(self.out, variant);
        self.out.push(b':');
        let mut o = self.serialize_map(Some(len))?;
        o.variant = true;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AccessRecord, Outcome, RecordBody};
    use crate::spool::Unsealed;
    use crate::testing::{access, logout, realistic};
    use proptest::strategy::Strategy as _;
    use std::collections::BTreeMap;

    fn via_value<T: Serialize>(v: &T) -> String {
        serde_json::to_string(&serde_json::to_value(v).unwrap()).unwrap()
    }

    #[derive(serde::Serialize)]
    enum Shapes {
        Unit,
        New(u8),
        Tuple(u8, String),
        Struct { z: u8, a: Option<bool> },
    }

    #[test]
    fn equals_the_value_route_on_records_and_odd_shapes() {
        let mut full = realistic(7);
        full.client_cert = Some(crate::record::ClientCert {
            subject: "CN=a\"b,O=\\x".into(),
            sha256: "abc".into(),
        });
        full.truncated.insert(
            "path".into(),
            crate::record::Truncation {
                length: 9000,
                sha256: "ff".into(),
            },
        );
        full.justification = Some("ER: \u{1F691} unconscious\n\ttab".into());
        full.duration_ms = 0.1 + 0.2;
        full.phase = Some(crate::record::Phase::Outcome);
        full.complete = Some(false);
        full.bytes_to_client = Some(u64::MAX);
        full.upstream_attempts = Some(2);
        full.query = Some("patient=Patient/1&_include=Observation:subject&x=%22\\q\"".into());
        full.claims = Some(BTreeMap::from([
            ("roles".to_string(), serde_json::json!(["nurse", "ward-3"])),
            (
                "acr".to_string(),
                serde_json::json!("urn:mace:incommon:iap:silver"),
            ),
            ("amr".to_string(), serde_json::json!(["pwd", "otp"])),
            ("auth_time".to_string(), serde_json::json!(1_764_466_800u64)),
            ("ratio".to_string(), serde_json::json!(0.1 + 0.2)),
            (
                "realm_access.roles".to_string(),
                serde_json::json!({"z": [1, {"b": null, "a": "\u{1F691}\n"}], "a": true}),
            ),
            ("tenant".to_string(), serde_json::json!("clinic \"north\"")),
        ]));
        let mut empty_claims = access(2);
        empty_claims.claims = Some(BTreeMap::new());
        for r in [access(0), access(1), realistic(3), full, empty_claims] {
            let outcome = Outcome::of(&r);
            let body = RecordBody::Access(AccessRecord { record: r, outcome });
            let u = Unsealed {
                v: 1,
                seq: 42,
                event_id: "e",
                prev_hash: "p",
                body: &body,
            };
            assert_eq!(to_canonical_string(&u).unwrap(), via_value(&u));
        }
        let mut odd = logout(3);
        odd.source = crate::record::LogoutSource::Admin;
        odd.actor = Some("officer \"K\" \\ ops\u{7f}\u{1}".into());
        odd.truncated.insert(
            "sub".into(),
            crate::record::Truncation {
                length: 600,
                sha256: "aa".into(),
            },
        );
        let mut bare = logout(0);
        (bare.issuer, bare.sid, bare.sub, bare.jti, bare.client_ip) = (None, None, None, None, None);
        for l in [logout(0), logout(1), odd, bare] {
            let body = RecordBody::Logout(l);
            let u = Unsealed {
                v: 1,
                seq: 43,
                event_id: "e",
                prev_hash: "p",
                body: &body,
            };
            assert_eq!(to_canonical_string(&u).unwrap(), via_value(&u));
        }
        let mut m: BTreeMap<String, Vec<Shapes>> = BTreeMap::new();
        m.insert(
            "b".into(),
            vec![
                Shapes::Unit,
                Shapes::New(1),
                Shapes::Tuple(2, "x".into()),
                Shapes::Struct { z: 3, a: None },
            ],
        );
        m.insert("a".into(), vec![]);
        assert_eq!(to_canonical_string(&m).unwrap(), via_value(&m));
        for f in [f64::NAN, f64::INFINITY, -0.0, 1e300, 5e-324, 123.456] {
            assert_eq!(to_canonical_string(&f).unwrap(), via_value(&f), "{f}");
        }
    }

    /// Keys out of order and given twice, nested: rebuilt in key order,
    /// the last value of a repeated key kept (as the `BTreeMap` route).
    #[test]
    fn unsorted_and_repeated_keys_are_rebuilt_in_order() {
        struct Odd(u8);
        impl Serialize for Odd {
            fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use ser::SerializeMap;
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("z\"q", &1)?;
                m.serialize_entry("a", &"first")?;
                if self.0 > 0 {
                    m.serialize_entry("m", &Odd(self.0 - 1))?;
                }
                m.serialize_entry("a", &"last")?;
                m.serialize_entry("", &[3, 2, 1])?;
                m.end()
            }
        }
        for depth in 0..3 {
            let got = to_canonical_string(&Odd(depth)).unwrap();
            assert_eq!(got, via_value(&Odd(depth)), "depth {depth}");
        }
        assert_eq!(
            to_canonical_string(&Odd(1)).unwrap(),
            r#"{"":[3,2,1],"a":"last","m":{"":[3,2,1],"a":"last","z\"q":1},"z\"q":1}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn equals_the_value_route_on_random_records(
            i in 0usize..100_000,
            ua in proptest::option::of(".{0,40}"),
            route in proptest::option::of("[a-z/{}]{0,20}"),
            status in 0u16..600,
            ms in proptest::num::f64::ANY,
            scopes in proptest::collection::vec("[a-zA-Z/.*]{1,12}", 0..4),
            query in proptest::option::of("[ -~]{0,60}"),
            claims in proptest::option::of(proptest::collection::btree_map(
                "[a-z_.]{1,12}",
                proptest::prop_oneof![
                    ".{0,20}".prop_map(serde_json::Value::from),
                    proptest::num::i64::ANY.prop_map(serde_json::Value::from),
                    proptest::collection::vec(".{0,8}", 0..4).prop_map(serde_json::Value::from),
                    proptest::collection::btree_map("[a-z]{1,4}", ".{0,8}", 0..3)
                        .prop_map(|m| serde_json::to_value(m).unwrap()),
                ],
                0..5,
            )),
        ) {
            let mut r = realistic(i);
            r.query = query;
            r.claims = claims;
            r.enforce_bounds();
            r.user_agent = ua;
            r.route = route;
            r.status = status;
            r.duration_ms = ms;
            r.scopes_granted = scopes;
            let outcome = Outcome::of(&r);
            let body = RecordBody::Access(AccessRecord { record: r, outcome });
            proptest::prop_assert_eq!(to_canonical_string(&body).unwrap(), via_value(&body));
        }

        #[test]
        fn equals_the_value_route_on_random_logout_records(
            i in 0usize..100_000,
            admin in proptest::bool::ANY,
            status in 0u16..600,
            reason in "[a-z_]{0,30}",
            sid in proptest::option::of(".{0,40}"),
            sub in proptest::option::of(".{0,40}"),
            actor in proptest::option::of(".{0,40}"),
            detail in proptest::option::of(".{0,80}"),
        ) {
            let mut l = logout(i);
            if admin {
                l.source = crate::record::LogoutSource::Admin;
            }
            (l.status, l.reason, l.sid, l.sub, l.actor, l.detail) = (status, reason, sid, sub, actor, detail);
            l.enforce_bounds();
            let body = RecordBody::Logout(l);
            let u = Unsealed { v: 1, seq: i as u64 + 1, event_id: "e", prev_hash: "p", body: &body };
            proptest::prop_assert_eq!(to_canonical_string(&u).unwrap(), via_value(&u));
        }
    }
}
