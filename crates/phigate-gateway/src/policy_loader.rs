//! Reading policy files from disk (the pure core compiles them).

use std::path::{Path, PathBuf};

use phigate_policy::{Diagnostic, PolicySet, PolicySource};

/// Paths of the policy files in `dir`: `*.yaml` and `*.yml`, sorted, excluding
/// policy test files (`*.test.yaml`) and hidden files (editors' swap files).
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    let name = dir.display().to_string();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        vec![Diagnostic::new(
            &name,
            None,
            format!("cannot read policy directory: {e}"),
        )]
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| vec![Diagnostic::new(&name, None, e.to_string())])?;
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().to_string();
        let is_yaml = file_name.ends_with(".yaml") || file_name.ends_with(".yml");
        let is_test = file_name.ends_with(".test.yaml") || file_name.ends_with(".test.yml");
        if is_yaml && !is_test && !file_name.starts_with('.') && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Read one policy file as a [`PolicySource`] named by its path.
pub fn read_file(path: &Path) -> Result<PolicySource, Diagnostic> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(PolicySource::new(name, text)),
        Err(e) => Err(Diagnostic::new(name, None, format!("cannot read: {e}"))),
    }
}

/// Every policy file in `dir` (see [`policy_files`]), read; all read errors together.
pub fn read_dir(dir: &Path) -> Result<Vec<PolicySource>, Vec<Diagnostic>> {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for p in policy_files(dir)? {
        match read_file(&p) {
            Ok(source) => sources.push(source),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(errors)
    }
}

/// Read and compile every policy file in `dir`.
pub fn load_dir(dir: &Path) -> Result<PolicySet, Vec<Diagnostic>> {
    phigate_policy::compile(&read_dir(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_yaml_files_and_skips_tests_and_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "version: 1\nroutes:\n  - methods: [GET]\n    path: /a\n    public: true\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("a.test.yaml"), "not: a policy\n").unwrap();
        std::fs::write(dir.path().join("README.md"), "# hi\n").unwrap();
        let p = load_dir(dir.path()).unwrap();
        assert_eq!(p.routes().len(), 1);
    }

    #[test]
    fn missing_directory_is_an_error() {
        let errs = load_dir(Path::new("/nonexistent/policies")).unwrap_err();
        assert!(errs[0].to_string().contains("cannot read policy directory"));
    }

    #[test]
    fn bundled_policies_compile() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/dev");
        load_dir(&dir).unwrap_or_else(|e| panic!("{e:?}"));
    }
}
