//! `_include` and `_revinclude`: their values parsed ([`includes`]) and the
//! resource types each can add to a search result
//! ([`Include::returned_types`]), so every one of them can be authorised.

use crate::smart::is_type_name;

/// One `_include` or `_revinclude` parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// `_revinclude` (resources that reference the matches) rather than
    /// `_include` (resources the matches reference).
    pub reverse: bool,
    /// `:iterate` (or the R3 `:recurse`): also applied to included resources.
    pub iterate: bool,
    /// The source resource type; `None` for the wildcard `*`.
    pub source: Option<String>,
    /// The reference search parameter; `None` for a wildcard.
    pub param: Option<String>,
    /// The target type (`Observation:subject:Patient`), when given.
    pub target: Option<String>,
}

/// What an include can add to a search result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returned {
    /// Any resource type (a wildcard, or a `Reference(Any)` parameter).
    AnyType,
    /// Exactly these types.
    Types(Vec<String>),
}

impl Include {
    /// The resource types this include can add to a result (FHIR R4 search
    /// parameter targets, [`crate::fhir_data::reference_targets`]). `Err` for
    /// a parameter phigate does not know (a custom search parameter, a
    /// typo) or a target the parameter cannot point at: what it returns
    /// cannot be known, so it cannot be authorised.
    pub fn returned_types(&self) -> Result<Returned, String> {
        let (Some(source), Some(param)) = (&self.source, &self.param) else {
            return Ok(if self.reverse {
                match &self.source {
                    Some(s) => Returned::Types(vec![s.clone()]),
                    None => Returned::AnyType,
                }
            } else {
                Returned::AnyType
            });
        };
        if self.reverse {
            // `_revinclude=Provenance:target` adds Provenance resources; the
            // parameter only has to exist.
            if crate::fhir_data::reference_targets(source, param).is_none() {
                return Err(format!(
                    "`{source}:{param}` is not a reference search parameter of {source}"
                ));
            }
            return Ok(Returned::Types(vec![source.clone()]));
        }
        let targets = crate::fhir_data::reference_targets(source, param)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("`{source}:{param}` is not a reference search parameter of {source}"))?;
        let any = targets == ["*"];
        match &self.target {
            Some(t) if any || targets.contains(&t.as_str()) => Ok(Returned::Types(vec![t.clone()])),
            Some(t) => Err(format!("`{source}:{param}` cannot point at {t}")),
            None if any => Ok(Returned::AnyType),
            None => Ok(Returned::Types(targets.iter().map(|t| t.to_string()).collect())),
        }
    }
}

/// The `_include` / `_revinclude` parameters of a search, parsed. Values
/// are `*`, `Source:param`, `Source:*` or `Source:param:Target`; several
/// comma-separated values count as several includes. Modifiers other than
/// `:iterate` / `:recurse` are an error, as is any malformed value.
pub fn includes(params: &[(String, String)]) -> Result<Vec<Include>, String> {
    let mut out = Vec::new();
    for (name, value) in params {
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        let reverse = match base {
            "_include" => false,
            "_revinclude" => true,
            _ => continue,
        };
        let iterate = match modifier {
            None => false,
            Some("iterate" | "recurse") => true,
            Some(m) => return Err(format!("`{base}:{m}`: unknown modifier")),
        };
        for v in value.split(',') {
            let bad = || format!("`{name}={v}` is not `*`, `Type:param` or `Type:param:Target`");
            let parts: Vec<&str> = v.split(':').collect();
            let inc = match parts.as_slice() {
                ["*"] => Include {
                    reverse,
                    iterate,
                    source: None,
                    param: None,
                    target: None,
                },
                [src, p] | [src, p, _] => {
                    let source = match *src {
                        "*" => None,
                        t if is_type_name(t) => Some(t.to_string()),
                        _ => return Err(bad()),
                    };
                    let param = match *p {
                        "*" => None,
                        p if !p.is_empty()
                            && p.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                        {
                            Some(p.to_string())
                        }
                        _ => return Err(bad()),
                    };
                    let target = match parts.get(2) {
                        None => None,
                        Some(t) if is_type_name(t) => Some(t.to_string()),
                        Some(_) => return Err(bad()),
                    };
                    Include {
                        reverse,
                        iterate,
                        source,
                        param,
                        target,
                    }
                }
                _ => return Err(bad()),
            };
            out.push(inc);
        }
    }
    Ok(out)
}
