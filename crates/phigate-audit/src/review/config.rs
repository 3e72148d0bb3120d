//! `review.yaml`: the thresholds of the review rules.
//!
//! The file types ([`ReviewFile`] and its sections) are what serde reads,
//! with every key optional and unknown keys refused; [`ReviewConfig::parse`]
//! checks them and compiles them into [`ReviewConfig`] (time zones looked up,
//! weekday lists turned into masks, durations into milliseconds), reporting
//! every problem at its `file:line:column`. An empty file, or no file, means
//! the defaults ([`ReviewConfig::default`], documented in the README).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use phigate_yaml::{Diagnostic, Locator, PathSeg};
use serde::{Deserialize, Deserializer};

/// The denial reasons that count as probing unless the file says otherwise.
pub const DEFAULT_PROBING_REASONS: [&str; 3] = [
    "insufficient_scope",
    "outside_patient_compartment",
    "no_matching_route",
];

/// A duration written as `5m`, `90s`, `24h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub std::time::Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration like 5m or 24h: {e}")))
    }
}

/// The whole file. Every section and key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewFile {
    /// Most event ids listed per finding (the count is always complete).
    pub evidence_cap: Option<usize>,
    pub breadth: BreadthFile,
    /// Working hours per role; an empty list turns the rule off.
    pub off_hours: Vec<WorkingHoursFile>,
    pub probing: ProbingFile,
    pub break_glass: BreakGlassFile,
    pub restricted: RestrictedFile,
    pub dormant: DormantFile,
    pub token: TokenFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreadthFile {
    pub enabled: Option<bool>,
    pub k: Option<f64>,
    pub min_patients_per_hour: Option<u32>,
    pub min_patients_per_day: Option<u32>,
    pub min_baseline_hours: Option<usize>,
    pub min_baseline_days: Option<usize>,
    pub min_peers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkingHoursFile {
    pub roles: Vec<String>,
    pub timezone: Option<String>,
    pub days: Vec<String>,
    pub hours: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbingFile {
    pub enabled: Option<bool>,
    pub window: Option<Dur>,
    pub min_denials: Option<usize>,
    /// Replaces the default reasons.
    pub reasons: Option<Vec<String>>,
    /// Added to the reasons.
    pub extra_reasons: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakGlassFile {
    pub enabled: Option<bool>,
    pub window: Option<Dur>,
    pub max_patients: Option<usize>,
    pub same_justification_patients: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestrictedFile {
    /// Patient id → label (`VIP`, `staff`).
    pub patients: BTreeMap<String, String>,
    /// Subjects (or clients) allowed to access them without a finding.
    pub exempt: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DormantFile {
    pub enabled: Option<bool>,
    pub silent_for: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenFile {
    pub enabled: Option<bool>,
    pub window: Option<Dur>,
    pub min_addresses: Option<usize>,
}

/// The compiled configuration the rules run with.
#[derive(Debug, Clone)]
pub struct ReviewConfig {
    pub evidence_cap: usize,
    pub breadth: Breadth,
    pub off_hours: Vec<WorkingHours>,
    pub probing: Probing,
    pub break_glass: BreakGlass,
    pub restricted: Restricted,
    pub dormant: Dormant,
    pub token: Token,
}

/// Distinct patients per subject per hour and per day, against the subject's
/// own baseline and its peers' (same roles): `median + k · MAD` (MAD scaled
/// by 1.4826, at least 1), and never below the floors.
#[derive(Debug, Clone)]
pub struct Breadth {
    pub enabled: bool,
    pub k: f64,
    pub min_patients_per_hour: u32,
    pub min_patients_per_day: u32,
    /// Active hours a subject needs before its own baseline is used.
    pub min_baseline_hours: usize,
    /// Active days a subject needs before its own baseline is used.
    pub min_baseline_days: usize,
    /// Subjects a role group needs before it is a peer baseline.
    pub min_peers: usize,
}

/// Working hours of the subjects holding one of `roles` (all subjects when
/// empty).
#[derive(Debug, Clone)]
pub struct WorkingHours {
    pub roles: Vec<String>,
    pub timezone: String,
    pub tz: jiff::tz::TimeZone,
    /// Bit 0 = Monday … bit 6 = Sunday.
    pub days: u8,
    /// Minutes after local midnight: start inclusive, end exclusive (wraps
    /// past midnight when start > end).
    pub hours: (u16, u16),
}

impl WorkingHours {
    /// Whether `unix_ms` falls inside these working hours.
    pub fn contains(&self, unix_ms: i64) -> bool {
        let Ok(ts) = jiff::Timestamp::from_millisecond(unix_ms) else {
            return false;
        };
        let local = ts.to_zoned(self.tz.clone());
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let (a, b) = self.hours;
        // A window past midnight belongs to the day it started on.
        let (inside, day) = if a < b {
            (minute >= a && minute < b, local.weekday())
        } else if minute >= a {
            (true, local.weekday())
        } else {
            (minute < b, local.weekday().previous())
        };
        inside && self.days & (1 << day.to_monday_zero_offset()) != 0
    }

    /// Whether these hours apply to a subject with `roles`.
    pub fn applies_to(&self, roles: &[String]) -> bool {
        self.roles.is_empty() || self.roles.iter().any(|r| roles.contains(r))
    }
}

#[derive(Debug, Clone)]
pub struct Probing {
    pub enabled: bool,
    pub window_ms: i64,
    pub min_denials: usize,
    pub reasons: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct BreakGlass {
    pub window_ms: i64,
    pub enabled: bool,
    /// Repeated: break-glass access to this many distinct patients within `window`.
    pub max_patients: usize,
    /// One justification, verbatim, used for this many distinct patients.
    pub same_justification_patients: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Restricted {
    pub patients: BTreeMap<String, String>,
    pub exempt: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct Dormant {
    pub enabled: bool,
    pub silent_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub enabled: bool,
    pub window_ms: i64,
    pub min_addresses: usize,
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

impl Default for ReviewConfig {
    /// The documented defaults (README, "Reviewing the audit spool").
    fn default() -> Self {
        ReviewConfig {
            evidence_cap: 20,
            breadth: Breadth {
                enabled: true,
                k: 5.0,
                min_patients_per_hour: 20,
                min_patients_per_day: 50,
                min_baseline_hours: 8,
                min_baseline_days: 3,
                min_peers: 3,
            },
            off_hours: Vec::new(),
            probing: Probing {
                enabled: true,
                window_ms: 5 * MINUTE_MS,
                min_denials: 20,
                reasons: DEFAULT_PROBING_REASONS.iter().map(|s| s.to_string()).collect(),
            },
            break_glass: BreakGlass {
                enabled: true,
                window_ms: DAY_MS,
                max_patients: 3,
                same_justification_patients: 2,
            },
            restricted: Restricted::default(),
            dormant: Dormant {
                enabled: true,
                silent_ms: 30 * DAY_MS,
            },
            token: Token {
                enabled: true,
                window_ms: 10 * MINUTE_MS,
                min_addresses: 4,
            },
        }
    }
}

impl ReviewConfig {
    /// Read and compile a review file.
    pub fn load(path: &Path) -> Result<ReviewConfig, Vec<Diagnostic>> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::new(name.clone(), None, format!("cannot read: {e}"))])?;
        ReviewConfig::parse(&name, &text)
    }

    /// Compile the text of a review file named `name`; every problem is
    /// reported, each at its `file:line:column`. Whitespace or comments
    /// only: the defaults.
    pub fn parse(name: &str, text: &str) -> Result<ReviewConfig, Vec<Diagnostic>> {
        let only_comments = text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        if only_comments {
            return Ok(ReviewConfig::default());
        }
        let (file, errors, loc) = phigate_yaml::parse_all_located::<ReviewFile>(name, text);
        let mut p = Problems { name, loc, errors };
        let Some(file) = file else { return Err(p.errors) };
        let config = compile(&mut p, file);
        if p.errors.is_empty() {
            Ok(config)
        } else {
            p.errors.sort_by_key(|d| (d.location.is_none(), d.location));
            Err(p.errors)
        }
    }
}

struct Problems<'a> {
    name: &'a str,
    loc: Locator,
    errors: Vec<Diagnostic>,
}

impl Problems<'_> {
    fn at(&mut self, path: &[PathSeg<'_>], message: impl Into<String>) {
        let location = self.loc.locate(path);
        self.errors.push(Diagnostic::new(self.name, location, message));
    }
}

fn compile(p: &mut Problems<'_>, f: ReviewFile) -> ReviewConfig {
    let mut c = ReviewConfig::default();
    use PathSeg::{Index, Key};
    if let Some(n) = f.evidence_cap {
        if n == 0 {
            p.at(&[Key("evidence_cap")], "evidence_cap must be at least 1");
        }
        c.evidence_cap = n.max(1);
    }

    let b = &mut c.breadth;
    let fb = f.breadth;
    b.enabled = fb.enabled.unwrap_or(b.enabled);
    if let Some(k) = fb.k {
        if !(k.is_finite() && k > 0.0) {
            p.at(&[Key("breadth"), Key("k")], "k must be a positive number");
        }
        b.k = k;
    }
    b.min_patients_per_hour = fb.min_patients_per_hour.unwrap_or(b.min_patients_per_hour);
    b.min_patients_per_day = fb.min_patients_per_day.unwrap_or(b.min_patients_per_day);
    b.min_baseline_hours = fb.min_baseline_hours.unwrap_or(b.min_baseline_hours);
    b.min_baseline_days = fb.min_baseline_days.unwrap_or(b.min_baseline_days);
    b.min_peers = fb.min_peers.unwrap_or(b.min_peers);

    for (i, w) in f.off_hours.iter().enumerate() {
        let at = |k: &'static str| [Key("off_hours"), Index(i), Key(k)];
        let Some(tz_name) = &w.timezone else {
            p.at(
                &[Key("off_hours"), Index(i)],
                "`timezone` is required (an IANA name like America/New_York)",
            );
            continue;
        };
        let tz = match jiff::tz::TimeZone::get(tz_name) {
            Ok(tz) => Some(tz),
            Err(_) => {
                p.at(
                    &at("timezone"),
                    format!("unknown time zone `{tz_name}` (use an IANA name like America/New_York)"),
                );
                None
            }
        };
        let days = if w.days.is_empty() {
            Some(0b0001_1111)
        } else {
            match parse_days(&w.days) {
                Ok(m) => Some(m),
                Err(e) => {
                    p.at(&at("days"), e);
                    None
                }
            }
        };
        let hours = match w.hours.as_deref().map(parse_hours) {
            None => {
                p.at(
                    &[Key("off_hours"), Index(i)],
                    "`hours` is required, e.g. \"07:00-19:00\"",
                );
                None
            }
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                p.at(&at("hours"), e);
                None
            }
        };
        if let (Some(tz), Some(days), Some(hours)) = (tz, days, hours) {
            c.off_hours.push(WorkingHours {
                roles: w.roles.clone(),
                timezone: tz_name.clone(),
                tz,
                days,
                hours,
            });
        }
    }

    let pr = &mut c.probing;
    pr.enabled = f.probing.enabled.unwrap_or(pr.enabled);
    if let Some(w) = f.probing.window {
        pr.window_ms = window_ms(p, &[Key("probing"), Key("window")], w);
    }
    if let Some(n) = f.probing.min_denials {
        if n < 2 {
            p.at(
                &[Key("probing"), Key("min_denials")],
                "min_denials must be at least 2",
            );
        }
        pr.min_denials = n.max(2);
    }
    if let Some(r) = f.probing.reasons {
        pr.reasons = r.into_iter().collect();
    }
    pr.reasons.extend(f.probing.extra_reasons);

    let bg = &mut c.break_glass;
    bg.enabled = f.break_glass.enabled.unwrap_or(bg.enabled);
    if let Some(w) = f.break_glass.window {
        bg.window_ms = window_ms(p, &[Key("break_glass"), Key("window")], w);
    }
    for (key, value, target) in [
        ("max_patients", f.break_glass.max_patients, &mut bg.max_patients),
        (
            "same_justification_patients",
            f.break_glass.same_justification_patients,
            &mut bg.same_justification_patients,
        ),
    ] {
        if let Some(n) = value {
            if n < 2 {
                p.at(
                    &[Key("break_glass"), Key(key)],
                    format!("{key} must be at least 2"),
                );
            }
            *target = n.max(2);
        }
    }

    c.restricted.patients = f.restricted.patients;
    c.restricted.exempt = f.restricted.exempt.into_iter().collect();

    c.dormant.enabled = f.dormant.enabled.unwrap_or(c.dormant.enabled);
    if let Some(w) = f.dormant.silent_for {
        c.dormant.silent_ms = window_ms(p, &[Key("dormant"), Key("silent_for")], w);
    }

    let t = &mut c.token;
    t.enabled = f.token.enabled.unwrap_or(t.enabled);
    if let Some(w) = f.token.window {
        t.window_ms = window_ms(p, &[Key("token"), Key("window")], w);
    }
    if let Some(n) = f.token.min_addresses {
        if n < 2 {
            p.at(
                &[Key("token"), Key("min_addresses")],
                "min_addresses must be at least 2",
            );
        }
        t.min_addresses = n.max(2);
    }
    c
}

fn window_ms(p: &mut Problems<'_>, at: &[PathSeg<'_>], d: Dur) -> i64 {
    let ms = i64::try_from(d.0.as_millis()).unwrap_or(i64::MAX);
    if ms < 1000 {
        p.at(at, "must be at least 1s");
    }
    ms.max(1000)
}

fn weekday_bit(d: &str) -> Result<u8, String> {
    Ok(match d.trim().to_ascii_lowercase().as_str() {
        "mon" => 0,
        "tue" => 1,
        "wed" => 2,
        "thu" => 3,
        "fri" => 4,
        "sat" => 5,
        "sun" => 6,
        other => {
            return Err(format!(
                "unknown weekday `{other}` (use mon … sun, or a range like mon..fri)"
            ))
        }
    })
}

/// `[mon..fri, sun]` → a mask (bit 0 = Monday); a range may wrap (`fri..mon`).
pub fn parse_days(list: &[String]) -> Result<u8, String> {
    let mut mask = 0u8;
    for d in list {
        match d.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (weekday_bit(a)?, weekday_bit(b)?);
                let mut i = a;
                loop {
                    mask |= 1 << i;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => mask |= 1 << weekday_bit(d)?,
        }
    }
    Ok(mask)
}

/// `"07:00-19:00"` → minutes after midnight (start, end); `22:00-06:00` wraps.
pub fn parse_hours(h: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{h}` is not a time range like 07:00-19:00");
    let (a, b) = h.split_once('-').ok_or_else(bad)?;
    let hm = |s: &str| -> Result<u16, String> {
        let (hh, mm) = s.trim().split_once(':').ok_or_else(bad)?;
        let (hh, mm): (u16, u16) = (hh.parse().map_err(|_| bad())?, mm.parse().map_err(|_| bad())?);
        if hh > 24 || mm > 59 || (hh == 24 && mm != 0) {
            return Err(format!("`{s}` is not a time of day"));
        }
        Ok(hh * 60 + mm)
    };
    let (a, b) = (hm(a)?, hm(b)?);
    if a == b {
        return Err(format!("`{h}` is an empty range"));
    }
    Ok((a, b))
}
