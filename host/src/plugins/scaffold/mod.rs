//! `agentserver plugins new NAME --lang c|rust|python|js`: writes a plugin project that builds
//! with its guide's commands (`build.sh`, the same text as the guide's build block in
//! `docs/guides/`) and has one test (`test.sh`: one task through `agentserver plugins run`).
//! The templates live next to this file; the C header, the JSON helper and the WIT package
//! are copied from `plugin-api`, so a project needs nothing from this repository.

use std::path::{Path, PathBuf};

use super::PluginError;

/// The languages `plugins new` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// A native plugin in C against `agentserver_plugin.h`.
    C,
    /// A native plugin in Rust with `agentserver-plugin-sdk`.
    Rust,
    /// A WASM component in Python (componentize-py).
    Python,
    /// A WASM component in JavaScript (componentize-js).
    Js,
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "c" => Ok(Self::C),
            "rust" => Ok(Self::Rust),
            "python" => Ok(Self::Python),
            "js" => Ok(Self::Js),
            other => Err(format!(
                "unknown language `{other}`: use c, rust, python or js"
            )),
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::C => "c",
            Self::Rust => "rust",
            Self::Python => "python",
            Self::Js => "js",
        })
    }
}

const HEADER: &str = include_str!("../../../../plugin-api/include/agentserver_plugin.h");
const JSON_HEADER: &str = include_str!("../../../../plugin-api/include/agentserver_json.h");

/// The template files of a language: (path in the project, text with `{{name}}`).
pub fn templates(lang: Lang) -> Vec<(&'static str, &'static str)> {
    let test = match lang {
        Lang::C => include_str!("c/test.sh"),
        Lang::Rust => include_str!("rust/test.sh"),
        Lang::Python => include_str!("python/test.sh"),
        Lang::Js => include_str!("js/test.sh"),
    };
    let mut files = vec![("test.sh", test), ("build.sh", build_script(lang))];
    match lang {
        Lang::C => files.extend([
            ("plugin.c", include_str!("c/plugin.c")),
            ("plugin.toml", include_str!("c/plugin.toml")),
            ("include/agentserver_plugin.h", HEADER),
            ("include/agentserver_json.h", JSON_HEADER),
        ]),
        Lang::Rust => files.extend([
            ("Cargo.toml", include_str!("rust/Cargo.toml")),
            ("src/lib.rs", include_str!("rust/src/lib.rs")),
            ("plugin.toml", include_str!("rust/plugin.toml")),
        ]),
        Lang::Python => files.extend([
            ("app.py", include_str!("python/app.py")),
            ("plugin.toml", include_str!("python/plugin.toml")),
        ]),
        Lang::Js => files.extend([
            ("plugin.js", include_str!("js/plugin.js")),
            ("plugin.toml", include_str!("js/plugin.toml")),
        ]),
    }
    files
}

/// The build script of a language: the guide's build commands.
pub fn build_script(lang: Lang) -> &'static str {
    match lang {
        Lang::C => include_str!("c/build.sh"),
        Lang::Rust => include_str!("rust/build.sh"),
        Lang::Python => include_str!("python/build.sh"),
        Lang::Js => include_str!("js/build.sh"),
    }
}

impl Lang {
    /// What to do after `plugins new`.
    pub fn next_steps(self, name: &str, dir: &Path) -> String {
        let tools = match self {
            Lang::C => "a C compiler (cc)",
            Lang::Rust => "cargo",
            Lang::Python => "componentize-py (pip install componentize-py)",
            Lang::Js => "componentize-js (npm install @bytecodealliance/componentize-js)",
        };
        format!(
            "Next (needs {tools}):\n  cd {dir}\n  sh build.sh\n  sh test.sh\n  \
             agentserver plugins install . && agentserver run --backend {name}\n\
             Guide: docs/guides/{guide}.md",
            dir = dir.display(),
            guide = match self {
                Lang::C => "c-native",
                Lang::Rust => "rust-native",
                Lang::Python => "python-wasm",
                Lang::Js => "js-wasm",
            }
        )
    }
}

/// Writes the project for `name` in `dir` (which must not exist or be empty). Returns the
/// files written, relative to `dir`.
pub fn write(name: &str, lang: Lang, dir: &Path) -> Result<Vec<PathBuf>, PluginError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PluginError::Io { path, source }
    };
    if !super::manifest::valid_name(name) {
        return Err(PluginError::Manifest {
            path: dir.join(super::MANIFEST_FILE),
            reason: format!("`{name}` is not a plugin name: use letters, digits, - and _"),
        });
    }
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(PluginError::Io {
            path: dir.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the folder exists and is not empty",
            ),
        });
    }
    let mut files: Vec<(PathBuf, String)> = templates(lang)
        .into_iter()
        .map(|(path, text)| (PathBuf::from(path), text.replace("{{name}}", name)))
        .collect();
    if matches!(lang, Lang::Python | Lang::Js) {
        use agentserver_plugin_api::wit::{BACKEND_V1, WASI_DEPS_V1};
        files.push((PathBuf::from("wit/backend.wit"), BACKEND_V1.to_owned()));
        for (file, text) in WASI_DEPS_V1 {
            files.push((PathBuf::from("wit/deps").join(file), (*text).to_owned()));
        }
    }
    for (path, text) in &files {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&full, text).map_err(io(&full))?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}
