//! A strict parser for the Prometheus text exposition format (0.0.4).
//!
//! Written here because the common crates mis-parse label values containing
//! `}` (our `route` label holds path templates like `/fhir/Patient/{id}`).
//! Strict on purpose: anything that is not valid exposition text fails the test.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
pub struct Sample {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// `# TYPE` per metric family.
    pub types: HashMap<String, String>,
}

impl Scrape {
    /// Sum of the samples named `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut out = Scrape::default();
    for (n, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, ty) = (
                it.next().ok_or_else(|| err("TYPE"))?,
                it.next().ok_or_else(|| err("TYPE"))?,
            );
            if !matches!(ty, "counter" | "gauge" | "histogram" | "summary" | "untyped") {
                return Err(err("unknown type"));
            }
            out.types.insert(name.to_string(), ty.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
        let metric = &line[..name_end];
        if metric.is_empty()
            || !metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            || metric.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(err("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let (l, remaining) = parse_more_labels(r).map_err(|m| err(&m))?;
            labels = l;
            rest = remaining;
        }
        if !rest.starts_with(' ') {
            return Err(err("no space before value"));
        }
        let mut parts = rest.split_ascii_whitespace();
        let v = parts.next().ok_or_else(|| err("no value"))?;
        let value = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse::<f64>().map_err(|_| err("bad value"))?,
        };
        if let Some(ts) = parts.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp"))?;
        }
        out.samples.push(Sample {
            metric: metric.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// Parse `name="value",...}` and return the labels and the text after `}`.
fn parse_more_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'}') {
            return Ok((labels, &s[i + 1..]));
        }
        let eq = s[i..].find('=').ok_or("label without =")? + i;
        let name = &s[i..eq];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err("bad label name".into());
        }
        if b.get(eq + 1) != Some(&b'"') {
            return Err("label value not quoted".into());
        }
        i = eq + 2;
        let mut value = String::new();
        loop {
            match b.get(i) {
                None => return Err("unterminated label value".into()),
                Some(b'"') => break,
                Some(b'\\') => {
                    value.push(match b.get(i + 1) {
                        Some(b'\\') => '\\',
                        Some(b'"') => '"',
                        Some(b'n') => '\n',
                        _ => return Err("bad escape".into()),
                    });
                    i += 2;
                }
                Some(_) => {
                    let c = s[i..].chars().next().ok_or("utf8")?;
                    value.push(c);
                    i += c.len_utf8();
                }
            }
        }
        if labels.insert(name.to_string(), value).is_some() {
            return Err("duplicate label".into());
        }
        i += 1;
        if b.get(i) == Some(&b',') {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_braces_escapes_and_rejects_garbage() {
        let s = super::parse(
            "# TYPE r counter\nr{route=\"/a/{id}\",x=\"q\\\"\\\\\"} 3\nh_bucket{le=\"+Inf\"} 1\nplain 2.5 1700000000\n",
        )
        .unwrap();
        assert_eq!(s.value("r", &[("route", "/a/{id}"), ("x", "q\"\\")]), 3.0);
        assert_eq!(s.value("plain", &[]), 2.5);
        assert_eq!(s.types["r"], "counter");
        for bad in [
            "r{a=b} 1",
            "r{a=\"b\" 1",
            "r{a=\"b\"}1",
            "r{a=\"b\",a=\"c\"} 1",
            "r x",
            "1r 1",
        ] {
            assert!(super::parse(bad).is_err(), "{bad}");
        }
    }
}
