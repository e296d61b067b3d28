//! Subscriber conditions: CEL over input names, compiled once.
//!
//! Meaning (kept from OpenFunction, without its bugs): an input is `true` while an event of it
//! was published within the Trigger's window (default 60 s) before the event being evaluated.
//! Only an event of an input the condition names can fire the subscriber, and what the
//! subscriber receives is that event. See `docs/trigger-semantics.md` for the table of cases.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use cel::{Context, Env, Program, Value};

/// Conditions with more inputs than this are not checked exhaustively for satisfiability,
/// and are evaluated with CEL rather than a table lookup.
const EXHAUSTIVE_LIMIT: usize = 12;

/// Most inputs one condition may name (one bit each in [`ConditionExpr::evaluate_bits`]).
const MAX_INPUTS: usize = 64;

/// The CEL environment, built once: `Context::default()` rebuilds the standard library on
/// every call, which costs tens of microseconds.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// Every expression compiled in this process, by its text: the checks and then the runtime
/// compile each condition and filter, and a fleet's Triggers often share one (10,000 Triggers
/// each with `condition: hook` compiled 20,000 times took a tenth of ofe's start-up). A
/// program is immutable, so sharing one is safe.
static COMPILED: LazyLock<Mutex<HashMap<String, Compiled>>> = LazyLock::new(Mutex::default);

/// An expression compiled, or why it does not compile.
type Compiled = Result<Arc<Program>, ConditionError>;

/// How many texts [`COMPILED`] keeps before it starts again: enough for any real set of
/// manifests, so that reloads which keep changing expressions cannot grow it without end.
const MEMO_LIMIT: usize = 65_536;

/// The shared CEL environment.
pub(crate) fn env() -> Arc<Env> {
    ENV.clone()
}

/// Why a condition gave no bool when run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// It gave another type, e.g. `eventA ? 1 : 0`.
    #[error("evaluated to {0}, not a bool")]
    NotBool(String),
    /// CEL could not run it.
    #[error("{0}")]
    Execution(cel::ExecutionError),
}

/// A compiled condition.
#[derive(Debug)]
pub struct ConditionExpr {
    text: String,
    program: Arc<Program>,
    /// The input names the expression refers to, sorted.
    names: Vec<String>,
    /// The result for every combination of active inputs (bit `i` is `names[i]`), when there
    /// are few enough inputs: evaluating an event is then a lookup, not a CEL run.
    table: Vec<bool>,
}

/// Why a condition cannot be used. The message shows the expression with a caret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConditionError {
    /// What is wrong, the expression, a caret line, and the fix.
    pub message: String,
    /// 1-based column the caret points at, when known.
    pub column: Option<usize>,
}

/// An error pointing at `column` of `text` with a caret line.
pub(crate) fn caret(text: &str, column: usize, what: &str, fix: &str) -> ConditionError {
    let pad = " ".repeat(column.saturating_sub(1));
    ConditionError {
        message: format!("{what} (column {column}); {fix}\n    {text}\n    {pad}^"),
        column: Some(column),
    }
}

/// Compiles `text` in the shared environment, once per process ([`COMPILED`]); a syntax error
/// points at its column.
pub(crate) fn compile_program(text: &str) -> Compiled {
    // Poisoning only means another thread panicked mid-insert; the map is still whole.
    let mut memo = COMPILED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(compiled) = memo.get(text) {
        return compiled.clone();
    }
    let compiled = ENV.compile(text).map(Arc::new).map_err(|errors| match errors.errors.first() {
        Some(first) => {
            let column = usize::try_from(first.pos.1).unwrap_or(1).max(1);
            caret(text, column, &format!("does not compile: {}", first.msg), "fix the expression")
        }
        None => ConditionError { message: format!("does not compile: {errors}"), column: None },
    });
    if memo.len() >= MEMO_LIMIT {
        memo.clear();
    }
    memo.insert(text.to_string(), compiled.clone());
    compiled
}

/// Finds the 1-based column of identifier `name` in `text`, outside string literals.
fn column_of(text: &str, name: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
        } else if c == b'"' || c == b'\'' {
            quote = Some(c);
        } else if text[i..].starts_with(name) {
            let before_ok = i == 0 || !is_ident_byte(bytes[i - 1]) && bytes[i - 1] != b'.';
            let after = i + name.len();
            let after_ok = after >= bytes.len() || !is_ident_byte(bytes[after]);
            if before_ok && after_ok {
                return Some(text[..i].chars().count() + 1);
            }
        }
        i += 1;
    }
    None
}

fn is_ident_byte(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphanumeric()
}

impl ConditionExpr {
    /// Compiles `text` for a Trigger whose inputs are `inputs`. Rejects syntax errors, names
    /// that are not inputs, expressions that are not boolean, and conditions no event of the
    /// inputs they name could ever make true.
    pub fn compile(text: &str, inputs: &BTreeSet<String>) -> Result<Self, ConditionError> {
        if text.trim().is_empty() {
            return Err(ConditionError {
                message:
                    "is empty; write a CEL expression over the input names, e.g. `eventA && eventB`"
                        .into(),
                column: None,
            });
        }
        let program = compile_program(text)?;
        let references = program.references();
        let mut names = Vec::new();
        for variable in references.variables() {
            if !inputs.contains(variable) {
                let column = column_of(text, variable).unwrap_or(1);
                let known = inputs.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
                return Err(caret(
                    text,
                    column,
                    &format!("`{variable}` is not an input of this Trigger"),
                    &format!("use one of: {known}"),
                ));
            }
            names.push(variable.to_string());
        }
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err(ConditionError {
                message: format!(
                    "`{text}` names no input, so no event could fire it; refer to at least one input"
                ),
                column: None,
            });
        }
        if names.len() > MAX_INPUTS {
            return Err(ConditionError {
                message: format!(
                    "`{text}` names {} inputs; a condition may name at most {MAX_INPUTS}",
                    names.len()
                ),
                column: None,
            });
        }
        let mut condition = Self { text: text.to_string(), program, names, table: Vec::new() };
        condition.table = condition.check_satisfiable()?;
        Ok(condition)
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The inputs the expression names. Only their events can fire it.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Evaluates with `true` for the names in `active` and `false` for the rest.
    pub fn evaluate(&self, active: &HashMap<&str, bool>) -> Result<bool, EvalError> {
        let mut context = Context::with_env(ENV.clone());
        for name in &self.names {
            context.add_variable_from_value(
                name.as_str(),
                active.get(name.as_str()).copied().unwrap_or(false),
            );
        }
        match self.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(EvalError::NotBool(format!("{other:?}"))),
            Err(e) => Err(EvalError::Execution(e)),
        }
    }

    /// Whether the condition is true when exactly the inputs whose bits are set in `bits` are
    /// active (bit `i` is `names()[i]`).
    pub fn evaluate_bits(&self, bits: u64) -> Result<bool, EvalError> {
        if let Some(result) = usize::try_from(bits).ok().and_then(|i| self.table.get(i)) {
            return Ok(*result);
        }
        self.evaluate_cel(bits)
    }

    /// Runs the CEL program with the inputs of `bits` active.
    fn evaluate_cel(&self, bits: u64) -> Result<bool, EvalError> {
        let active: HashMap<&str, bool> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), bits & (1 << i) != 0))
            .collect();
        self.evaluate(&active)
    }

    /// Tries every assignment (for a handful of inputs): the result must be a bool, and for at
    /// least one named input there must be a state where its own event makes the condition
    /// true — otherwise the subscriber could never fire (e.g. `!eventA`). Returns the table
    /// of results, empty when there are too many inputs to try them all.
    fn check_satisfiable(&self) -> Result<Vec<bool>, ConditionError> {
        let n = self.names.len();
        if n > EXHAUSTIVE_LIMIT {
            return Ok(Vec::new());
        }
        let mut can_fire = false;
        let mut table = Vec::with_capacity(1 << n);
        for bits in 0u64..(1 << n) {
            match self.evaluate_cel(bits) {
                Ok(result) => {
                    can_fire |= result && bits != 0;
                    table.push(result);
                }
                Err(e) => {
                    return Err(ConditionError {
                        message: format!(
                            "`{}` {e}; conditions must be boolean expressions",
                            self.text
                        ),
                        column: None,
                    });
                }
            }
        }
        if can_fire {
            Ok(table)
        } else {
            Err(ConditionError {
                message: format!(
                    "`{}` can never fire: it is false whenever an input it names has just fired, and \
                     only those inputs' events can fire a subscriber; name an input positively",
                    self.text
                ),
                column: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> BTreeSet<String> {
        ["eventA", "eventB"].into_iter().map(String::from).collect()
    }

    fn eval(c: &ConditionExpr, a: bool, b: bool) -> bool {
        c.evaluate(&HashMap::from([("eventA", a), ("eventB", b)])).expect("evaluates")
    }

    #[test]
    fn an_expression_is_compiled_once_and_its_error_kept() {
        // 10,000 Triggers sharing `condition: eventA` share one program.
        let first = compile_program("eventA && eventB").expect("compiles");
        let again = compile_program("eventA && eventB").expect("compiles");
        assert!(Arc::ptr_eq(&first, &again));
        // An error read from the memo still points at its column.
        for _ in 0..2 {
            let e = ConditionExpr::compile("eventA && (eventB", &inputs()).expect_err("no compile");
            assert!(e.message.contains("does not compile"), "{}", e.message);
            assert!(e.column.is_some(), "{}", e.message);
        }
        // The inputs are checked for each Trigger, not memoised with the program.
        let other: BTreeSet<String> = ["eventA".to_string()].into();
        let e = ConditionExpr::compile("eventA && eventB", &other).expect_err("eventB unknown");
        assert!(e.message.contains("`eventB` is not an input of this Trigger"), "{}", e.message);
    }

    #[test]
    fn boolean_logic_over_inputs() {
        let and = ConditionExpr::compile("eventA && eventB", &inputs()).expect("compiles");
        assert!(eval(&and, true, true));
        assert!(!eval(&and, true, false));
        let or = ConditionExpr::compile("eventA || eventB", &inputs()).expect("compiles");
        assert!(eval(&or, false, true));
        let not = ConditionExpr::compile("eventA && !eventB", &inputs()).expect("compiles");
        assert!(!eval(&not, true, true));
        assert_eq!(not.names(), ["eventA", "eventB"]);
    }

    #[test]
    fn syntax_error_points_at_its_column() {
        let err = ConditionExpr::compile("eventA && && eventB", &inputs()).unwrap_err();
        assert!(err.message.contains("does not compile"), "{}", err.message);
        let column = err.column.expect("column");
        assert_eq!(column, 11, "{}", err.message);
        assert!(
            err.message.ends_with(&format!("\n    {}^", " ".repeat(column - 1))),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_name_points_at_it() {
        let err = ConditionExpr::compile("eventA && eventC", &inputs()).unwrap_err();
        assert_eq!(err.column, Some(11));
        assert!(err.message.contains("`eventC` is not an input"), "{}", err.message);
        assert!(err.message.contains("use one of: eventA, eventB"), "{}", err.message);
        assert!(
            err.message.ends_with("\n    eventA && eventC\n              ^"),
            "{}",
            err.message
        );
    }

    #[test]
    fn conditions_that_cannot_fire_or_are_not_boolean_are_rejected() {
        assert!(
            ConditionExpr::compile("!eventA", &inputs())
                .unwrap_err()
                .message
                .contains("can never fire")
        );
        assert!(
            ConditionExpr::compile("true", &inputs())
                .unwrap_err()
                .message
                .contains("names no input")
        );
        assert!(
            ConditionExpr::compile("eventA ? 1 : 2", &inputs())
                .unwrap_err()
                .message
                .contains("not a bool")
        );
        assert!(ConditionExpr::compile("  ", &inputs()).unwrap_err().message.contains("is empty"));
    }
}
