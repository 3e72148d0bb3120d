//! The paging links of a search-result Bundle: [`bundle_links`] reads its
//! `link` array from a bounded prefix of the JSON, with a small scanner for
//! top-level members.

/// The `link` entries (`relation`, `url`) of a FHIR Bundle, read from the
/// first bytes of its JSON (`prefix` may be cut anywhere): servers write
/// `link` before `entry`, so a bounded prefix of a large search result
/// holds its paging links. A `link` array that is cut off, or that comes
/// after the prefix, yields what could be read — links never found are
/// simply not known (a continuation through them is refused).
pub fn bundle_links(prefix: &[u8]) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Link {
        relation: Option<String>,
        url: Option<String>,
    }
    let Some(start) = top_level_value(prefix, b"link") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let array = &prefix[start..];
    if array.first() != Some(&b'[') {
        return out;
    }
    // Read the array element by element, so a cut-off tail still yields the
    // complete elements before it.
    let mut pos = 1;
    loop {
        while array
            .get(pos)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == b',')
        {
            pos += 1;
        }
        if array.get(pos).is_none_or(|b| *b == b']') {
            break;
        }
        let mut items = serde_json::Deserializer::from_slice(&array[pos..]).into_iter::<Link>();
        match items.next() {
            Some(Ok(link)) => {
                if let (Some(r), Some(u)) = (link.relation, link.url) {
                    out.push((r, u));
                }
                pos += items.byte_offset();
            }
            _ => break,
        }
    }
    out
}

/// The byte offset of the value of top-level member `key` in a JSON object
/// (a prefix of one), skipping strings and nested values.
fn top_level_value(json: &[u8], key: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0usize;
    let mut expecting_key = false;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    if json[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let end = i.min(json.len());
                if depth == 1 && expecting_key && &json[start..end] == key {
                    // Skip to the value after the colon.
                    let mut j = end + 1;
                    while j < json.len() && (json[j].is_ascii_whitespace() || json[j] == b':') {
                        j += 1;
                    }
                    return (j < json.len()).then_some(j);
                }
                expecting_key = false;
            }
            b'{' | b'[' => {
                depth += 1;
                expecting_key = json[i] == b'{' && depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expecting_key = true,
            _ => {}
        }
        i += 1;
    }
    None
}
