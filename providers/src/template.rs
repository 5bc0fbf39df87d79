//! Job-script templates: handlebars files an admin can read and override.
//!
//! Rendering is strict (a variable the template names but the provider does not supply is
//! an error, not an empty string) and never HTML-escapes: the output is a shell script,
//! and values that must be one shell word go through the `shell_quote` helper.

use std::path::Path;

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason,
};

use crate::error::ProviderError;
use crate::script::ScriptVars;

/// The built-in templates, by provider name, embedded at build time from `templates/`.
pub const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    ("local", include_str!("../../templates/local.sh.hbs")),
    ("slurm", include_str!("../../templates/slurm.sh.hbs")),
    ("pbs", include_str!("../../templates/pbs.sh.hbs")),
    ("torque", include_str!("../../templates/torque.sh.hbs")),
    ("cobalt", include_str!("../../templates/cobalt.sh.hbs")),
];

/// The name the one template is registered under in its registry.
const NAME: &str = "job-script";

/// A compiled job-script template.
pub struct ScriptTemplate {
    registry: Handlebars<'static>,
    origin: String,
}

impl std::fmt::Debug for ScriptTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl ScriptTemplate {
    /// The built-in template of `provider` (`local`, ...), or `None` if there is none.
    pub fn builtin(provider: &str) -> Option<Self> {
        let (name, source) = BUILTIN_TEMPLATES
            .iter()
            .find(|(name, _)| *name == provider)?;
        let template = Self::compile(format!("built-in {name}.sh.hbs"), source)
            .expect("built-in templates compile (tested)");
        Some(template)
    }

    /// Reads and compiles the template at `path` (an endpoint's `script_template`).
    pub fn from_file(path: &Path) -> Result<Self, ProviderError> {
        Self::compile(path.display().to_string(), &read_template(path)?)
    }

    /// Compiles `source`; `origin` names it in errors (a path, or `built-in NAME`).
    pub fn compile(origin: impl Into<String>, source: &str) -> Result<Self, ProviderError> {
        let origin = origin.into();
        let registry = strict_registry(
            &origin,
            NAME,
            source,
            "shell_quote",
            Box::new(shell_quote_helper),
        )?;
        Ok(Self { registry, origin })
    }

    /// Where the template came from: its path, or `built-in NAME`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Renders the script for one block.
    pub fn render(&self, vars: &ScriptVars) -> Result<String, ProviderError> {
        self.registry
            .render(NAME, vars)
            .map_err(|e| ProviderError::Template {
                template: self.origin.clone(),
                message: match (e.line_no, e.column_no) {
                    (Some(line), Some(column)) => {
                        format!("line {line}, column {column}: {}", e.reason())
                    }
                    _ => e.reason().to_string(),
                },
            })
    }

    /// Renders the template once with example values, so that a variable the provider does
    /// not supply is found when the config is loaded rather than at the first submission.
    pub fn validate(&self, example: &ScriptVars) -> Result<(), ProviderError> {
        self.render(example).map(drop)
    }
}

/// `word` as one shell word: unchanged when it holds only characters no shell treats
/// specially, otherwise in single quotes (an embedded `'` becomes `'\''`).
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `{{shell_quote x}}`: a string or number as one shell word; an array as its elements,
/// each quoted, separated by spaces (an argv).
fn shell_quote_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let param = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("shell_quote", 0))?;
    if param.is_value_missing() {
        let path = param.relative_path().cloned();
        return Err(RenderErrorReason::MissingVariable(path).into());
    }
    let word = |v: &serde_json::Value| -> Result<String, RenderError> {
        match v {
            serde_json::Value::String(s) => Ok(shell_quote(s)),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            serde_json::Value::Bool(b) => Ok(b.to_string()),
            _ => Err(RenderErrorReason::InvalidParamType("string, number or array").into()),
        }
    };
    let text = match param.value() {
        serde_json::Value::Array(items) => items
            .iter()
            .map(word)
            .collect::<Result<Vec<_>, _>>()?
            .join(" "),
        other => word(other)?,
    };
    out.write(&text)?;
    Ok(())
}

/// The text of a template file (an endpoint's override).
pub(crate) fn read_template(path: &Path) -> Result<String, ProviderError> {
    std::fs::read_to_string(path).map_err(|source| ProviderError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A handlebars registry holding `source` as `name`: strict (a missing variable is an
/// error), no HTML escaping, with one `helper`. A syntax error names `origin`, the line
/// and the column.
pub(crate) fn strict_registry(
    origin: &str,
    name: &str,
    source: &str,
    helper_name: &str,
    helper: Box<dyn handlebars::HelperDef + Send + Sync + 'static>,
) -> Result<Handlebars<'static>, ProviderError> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_escape_fn(handlebars::no_escape);
    registry.register_helper(helper_name, helper);
    registry
        .register_template_string(name, source)
        .map_err(|e| ProviderError::Template {
            template: origin.to_owned(),
            message: match e.pos() {
                Some((line, column)) => format!("line {line}, column {column}: {}", e.reason()),
                None => e.reason().to_string(),
            },
        })?;
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("tcp://10.0.0.1:55000"), "tcp://10.0.0.1:55000");
        assert_eq!(shell_quote("--block-id=b-1"), "--block-id=b-1");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME;rm -rf /"), "'$HOME;rm -rf /'");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
    }

    #[test]
    fn shell_quoted_words_survive_a_real_shell() {
        let words = [
            "plain",
            "",
            "it's",
            "$(touch /tmp/x)",
            "a b\tc\nd",
            "\\",
            "'\"'",
        ];
        let line = words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>();
        let script = format!(
            "for w in {}; do printf '%s\\0' \"$w\"; done",
            line.join(" ")
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(str::to_owned)
            .collect();
        assert_eq!(got, words);
    }

    #[test]
    fn the_helper_quotes_strings_numbers_and_argvs() {
        let t = ScriptTemplate::compile(
            "test",
            "{{shell_quote s}} {{shell_quote n}} {{shell_quote argv}}",
        )
        .unwrap();
        let out = t
            .registry
            .render(
                NAME,
                &serde_json::json!({"s": "a b", "n": 3, "argv": ["x", "y z"]}),
            )
            .unwrap();
        assert_eq!(out, "'a b' 3 x 'y z'");
    }

    #[test]
    fn a_missing_variable_is_an_error_naming_the_template_and_line() {
        let t =
            ScriptTemplate::compile("/site/slurm.sh.hbs", "#!/bin/bash\n{{partition}}\n").unwrap();
        let err = t.render(&ScriptVars::example()).unwrap_err().to_string();
        assert!(
            err.starts_with("job script template /site/slurm.sh.hbs: line 2"),
            "{err}"
        );
        assert!(err.contains("partition"), "{err}");
        let t = ScriptTemplate::compile("t", "{{shell_quote nothing}}").unwrap();
        let err = t.render(&ScriptVars::example()).unwrap_err().to_string();
        assert!(err.contains("nothing"), "{err}");
    }

    #[test]
    fn a_syntax_error_names_the_template_and_line() {
        let err = ScriptTemplate::compile("/site/bad.hbs", "ok\n{{#if walltime}}\nno end\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("job script template /site/bad.hbs: line"),
            "{err}"
        );
    }

    #[test]
    fn output_is_not_html_escaped() {
        let t = ScriptTemplate::compile("t", "{{worker_init}}").unwrap();
        let mut vars = ScriptVars::example();
        vars.worker_init = "a && b < c > 'd' \"e\"".into();
        assert_eq!(t.render(&vars).unwrap(), vars.worker_init);
    }

    #[test]
    fn every_builtin_template_renders_the_example() {
        // The batch templates name the batch options, which every batch provider supplies.
        let batch = crate::BatchOptions::default().script_vars();
        for (name, _) in BUILTIN_TEMPLATES {
            let t = ScriptTemplate::builtin(name).unwrap();
            t.validate(&ScriptVars::example().with_extra(batch.clone()))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        ScriptTemplate::builtin("local")
            .unwrap()
            .validate(&ScriptVars::example())
            .unwrap();
        assert!(ScriptTemplate::builtin("condor").is_none());
    }

    #[test]
    fn from_file_names_a_missing_file() {
        let err = ScriptTemplate::from_file(Path::new("/nonexistent/t.hbs")).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/t.hbs: "), "{err}");
    }
}
