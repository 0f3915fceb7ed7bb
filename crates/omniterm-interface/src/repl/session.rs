//! The conversation of the REPL, without a terminal: a line in, what to print out.
//!
//! Every utterance is interpreted and shown as a plan before anything would run: the
//! canonical command, the intent and confidence, and what each word was read as. A
//! mutating plan waits for `yes`; a dangerous one for a typed phrase; a mutating command
//! without a target waits for the missing piece. Execution arrives with the terminal
//! service, so a confirmed plan is only reported as what would run.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use nu_ansi_term::{Color, Style};

use crate::nl::{Intent, Interpretation, Interpreter, Limits};

/// Words that confirm a plan that is not dangerous.
const YES: &[&str] = &[
    "y",
    "yes",
    "confirm",
    "confirmed",
    "proceed",
    "go",
    "ok",
    "do it",
];
/// Words that drop whatever is pending.
const NO: &[&str] = &[
    "n",
    "no",
    "cancel",
    "abort",
    "stop",
    "never mind",
    "nevermind",
    "nope",
];
/// Words that leave the REPL.
const EXIT: &[&str] = &["exit", "quit", ":q", "bye"];

/// One example per intent, for `help`.
const HELP: &[(Intent, &str, &str)] = &[
    (
        Intent::Health,
        "is everything healthy?",
        "health of every service or one",
    ),
    (
        Intent::Status,
        "status of the gateway",
        "releases, replicas and rollouts",
    ),
    (
        Intent::Deploy,
        "deploy the engine 1.4 as a 10% canary",
        "start a release or canary",
    ),
    (
        Intent::Promote,
        "promote the engine canary",
        "move a canary forward or to 100%",
    ),
    (
        Intent::Abort,
        "abort the gateway rollout",
        "stop a rollout, keep the stable version",
    ),
    (
        Intent::Rollback,
        "roll back core-engine",
        "return to the previous release",
    ),
    (
        Intent::Scale,
        "scale the gateway to 3 replicas",
        "set or change replicas",
    ),
    (
        Intent::Logs,
        "errors from the engine in the last 10 minutes",
        "read logs",
    ),
    (
        Intent::Metrics,
        "p99 latency of the gateway",
        "read metrics",
    ),
    (
        Intent::Build,
        "build the controller",
        "build a release from the workspace",
    ),
    (
        Intent::Encrypt,
        "encrypt 'text' with key payments",
        "encrypt with a named key",
    ),
    (
        Intent::Decrypt,
        "decrypt 'omnimesh:v1:…' with key payments",
        "decrypt",
    ),
    (
        Intent::Analyze,
        "analyze 1 2 3 4",
        "statistics over numbers",
    ),
];

/// What one line produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// What to print (several lines, no trailing newline).
    pub output: String,
    /// Whether the REPL should end.
    pub exit: bool,
}

/// ANSI colour when the output is a terminal; plain text otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    colour: bool,
}

impl Palette {
    /// `colour` decides whether styles are emitted at all.
    pub fn new(colour: bool) -> Self {
        Self { colour }
    }

    fn paint(self, style: Style, text: &str) -> String {
        if self.colour {
            style.paint(text).to_string()
        } else {
            text.to_owned()
        }
    }

    fn label(self, text: &str) -> String {
        self.paint(Style::new().bold(), text)
    }

    fn command(self, text: &str) -> String {
        self.paint(Color::Cyan.bold(), text)
    }

    fn dim(self, text: &str) -> String {
        self.paint(Style::new().dimmed(), text)
    }

    fn good(self, text: &str) -> String {
        self.paint(Color::Green.normal(), text)
    }

    fn warn(self, text: &str) -> String {
        self.paint(Color::Yellow.bold(), text)
    }

    fn danger(self, text: &str) -> String {
        self.paint(Color::Red.bold(), text)
    }
}

/// What waits for the operator's next line.
#[derive(Debug, Clone)]
enum Pending {
    /// A plan waits for `yes`, or for `phrase` typed out when it is dangerous.
    Confirm {
        interpretation: Box<Interpretation>,
        phrase: Option<String>,
    },
    /// A command waits for a missing piece; the answer is read together with `text`.
    Clarify { text: String, intent: Intent },
}

/// Versions seen in this session (and its history), offered by completion.
pub type SeenVersions = Arc<Mutex<BTreeSet<String>>>;

/// The REPL's state between lines.
#[derive(Debug)]
pub struct Session {
    interpreter: Interpreter,
    limits: Limits,
    palette: Palette,
    pending: Option<Pending>,
    versions: SeenVersions,
}

impl Session {
    /// A session that interprets with `interpreter` and records versions in `versions`.
    pub fn new(interpreter: Interpreter, limits: Limits, palette: Palette) -> Self {
        Self {
            interpreter,
            limits,
            palette,
            pending: None,
            versions: SeenVersions::default(),
        }
    }

    /// The versions this session has seen, shared with the completer.
    pub fn versions(&self) -> SeenVersions {
        Arc::clone(&self.versions)
    }

    /// The prompt for the next line: it says what is awaited.
    pub fn prompt(&self) -> String {
        match &self.pending {
            None => "omniterm".to_owned(),
            Some(Pending::Confirm { phrase: None, .. }) => "proceed? [y/N]".to_owned(),
            Some(Pending::Confirm {
                phrase: Some(phrase),
                ..
            }) => format!("type `{phrase}` to confirm"),
            Some(Pending::Clarify { .. }) => "answer".to_owned(),
        }
    }

    /// Drops whatever is pending (Ctrl-C); says so when something was.
    pub fn interrupt(&mut self) -> Option<String> {
        self.pending
            .take()
            .map(|_| self.palette.warn("cancelled: nothing ran"))
    }

    /// Handles one line.
    pub fn handle(&mut self, line: &str) -> Turn {
        let trimmed = line.trim();
        let lower = trimmed.to_lowercase();
        if EXIT.contains(&lower.as_str()) {
            let mut output = self.interrupt().unwrap_or_default();
            if !output.is_empty() {
                output.push('\n');
            }
            output.push_str("bye");
            return Turn { output, exit: true };
        }
        if trimmed.is_empty() {
            return self.say(String::new());
        }
        match self.pending.take() {
            Some(Pending::Confirm {
                interpretation,
                phrase,
            }) => {
                let confirmed = match &phrase {
                    Some(phrase) => trimmed == phrase,
                    None => YES.contains(&lower.as_str()),
                };
                if confirmed {
                    return self.say(self.would_run(&interpretation, "confirmed"));
                }
                if phrase.is_some() || NO.contains(&lower.as_str()) {
                    let why = if phrase.is_some() && !NO.contains(&lower.as_str()) {
                        "cancelled: the confirmation did not match; nothing ran"
                    } else {
                        "cancelled: nothing ran"
                    };
                    return self.say(self.palette.warn(why));
                }
                // Anything else is a new command; the plan is dropped, and says so.
                let dropped = self.palette.warn("(previous plan dropped: nothing ran)");
                let turn = self.interpret(trimmed);
                self.say(format!("{dropped}\n{}", turn.output))
            }
            Some(Pending::Clarify { text, intent }) => {
                if NO.contains(&lower.as_str()) {
                    return self.say(self.palette.warn("cancelled: nothing ran"));
                }
                let combined = format!("{text} {trimmed}");
                match self.interpreter.interpret(&combined) {
                    Ok(interpretation) if interpretation.intent == intent => {
                        self.respond(interpretation)
                    }
                    _ => self.interpret(trimmed),
                }
            }
            None => self.interpret(trimmed),
        }
    }

    fn say(&self, output: String) -> Turn {
        Turn {
            output,
            exit: false,
        }
    }

    fn interpret(&mut self, text: &str) -> Turn {
        match self.interpreter.interpret(text) {
            Ok(interpretation) => self.respond(interpretation),
            Err(error) => self.say(self.palette.danger(&format!("refused: {error}"))),
        }
    }

    fn respond(&mut self, interpretation: Interpretation) -> Turn {
        if let Some(version) = &interpretation.entities.version {
            self.versions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(version.clone());
        }
        let palette = self.palette;
        match interpretation.intent {
            Intent::Unknown => {
                let mut output = palette.warn("not understood: nothing will run");
                for line in &interpretation.explanation {
                    output.push_str(&format!("\n  {}", palette.dim(line)));
                }
                if let Some(hint) = &interpretation.clarification {
                    output.push_str(&format!("\n{hint}"));
                }
                return self.say(output);
            }
            Intent::Help => return self.say(self.help(interpretation.entities.topic.as_deref())),
            _ => {}
        }
        let mut output = self.plan(&interpretation);
        if let Some(question) = &interpretation.clarification {
            output.push_str(&format!("\n{}", palette.warn(question)));
            self.pending = Some(Pending::Clarify {
                text: interpretation.text.clone(),
                intent: interpretation.intent,
            });
            return self.say(output);
        }
        if !interpretation.needs_confirmation {
            let how = if interpretation.entities.dry_run == Some(true) {
                "dry run"
            } else {
                "read-only"
            };
            output.push('\n');
            output.push_str(&self.would_run(&interpretation, how));
            return self.say(output);
        }
        let phrase = interpretation.dangerous.then(|| {
            let target = interpretation
                .entities
                .service
                .as_deref()
                .filter(|service| *service != "all")
                .unwrap_or("everything");
            format!("{} {target}", interpretation.intent)
        });
        match &phrase {
            Some(phrase) => output.push_str(&format!(
                "\n{} {}\ntype `{phrase}` to confirm; anything else cancels",
                palette.danger("DANGER:"),
                self.danger_reason(&interpretation),
            )),
            None => output.push_str("\nproceed? [y/N]"),
        }
        self.pending = Some(Pending::Confirm {
            interpretation: Box::new(interpretation),
            phrase,
        });
        self.say(output)
    }

    fn plan(&self, interpretation: &Interpretation) -> String {
        let palette = self.palette;
        let effect = if interpretation.mutates {
            "changes the platform"
        } else if interpretation.entities.dry_run == Some(true) {
            "dry run: changes nothing"
        } else {
            "read-only"
        };
        let mut output = format!(
            "{}  {}\n{}  {} (confidence {:.2}, {effect})",
            palette.label("plan  "),
            palette.command(&interpretation.canonical),
            palette.label("intent"),
            interpretation.intent,
            interpretation.confidence,
        );
        for line in &interpretation.explanation {
            output.push_str(&format!("\n        {}", palette.dim(line)));
        }
        output
    }

    fn would_run(&self, interpretation: &Interpretation, how: &str) -> String {
        format!(
            "{} would run `{}` (execution arrives with the terminal service)",
            self.palette.good(&format!("{how}:")),
            interpretation.canonical,
        )
    }

    fn danger_reason(&self, interpretation: &Interpretation) -> String {
        let entities = &interpretation.entities;
        let max = self.limits.max_replicas;
        if entities.service.as_deref() == Some("all")
            || entities.environment.as_deref() == Some("all")
        {
            "it targets every service or environment".to_owned()
        } else if interpretation.intent == Intent::Rollback && entities.service.is_none() {
            "it rolls back everything".to_owned()
        } else if entities.replicas.is_some_and(|replicas| replicas <= 0) {
            "it scales to zero replicas".to_owned()
        } else if entities.replicas.is_some() || entities.replicas_delta.is_some() {
            format!("it goes beyond the maximum of {max} replicas")
        } else {
            "it sends 100% of production traffic at once".to_owned()
        }
    }

    fn help(&self, topic: Option<&str>) -> String {
        let palette = self.palette;
        let rows: Vec<&(Intent, &str, &str)> = HELP
            .iter()
            .filter(|(intent, ..)| topic.is_none_or(|topic| intent.as_str() == topic))
            .collect();
        let mut output = palette.label("say what you want done, in plain English:");
        for (intent, example, what) in rows {
            output.push_str(&format!(
                "\n  {:<9} {}  {}",
                intent.as_str(),
                palette.command(example),
                palette.dim(what)
            ));
        }
        output.push_str(&palette.dim(
            "\nchanges are shown as a plan and wait for `yes`; dangerous ones for a typed \
             phrase. Tab completes services, versions and commands; `exit` leaves.",
        ));
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new(
            Interpreter::new(Limits::default()),
            Limits::default(),
            Palette::new(false),
        )
    }

    #[test]
    fn a_mutating_plan_waits_for_yes_and_then_reports_what_would_run() {
        let mut session = session();
        let turn = session.handle("deploy the engine 1.4.2 as a 10% canary in staging");
        assert!(
            turn.output
                .contains("plan    deploy core-engine 1.4.2 --env staging --canary 10"),
            "{}",
            turn.output
        );
        assert!(turn.output.ends_with("proceed? [y/N]"), "{}", turn.output);
        assert_eq!(session.prompt(), "proceed? [y/N]");
        let turn = session.handle("yes");
        assert_eq!(
            turn.output,
            "confirmed: would run `deploy core-engine 1.4.2 --env staging --canary 10` \
             (execution arrives with the terminal service)"
        );
        assert_eq!(session.prompt(), "omniterm");
    }

    #[test]
    fn no_and_ctrl_c_cancel_and_nothing_runs() {
        let mut session = session();
        session.handle("scale the gateway to 3 replicas");
        assert_eq!(session.handle("no").output, "cancelled: nothing ran");
        session.handle("scale the gateway to 3 replicas");
        assert_eq!(
            session.interrupt().as_deref(),
            Some("cancelled: nothing ran")
        );
        assert_eq!(session.interrupt(), None);
        assert_eq!(session.prompt(), "omniterm");
    }

    #[test]
    fn a_new_command_instead_of_an_answer_drops_the_plan() {
        let mut session = session();
        session.handle("roll back the gateway");
        let turn = session.handle("status of the engine");
        assert!(
            turn.output
                .starts_with("(previous plan dropped: nothing ran)")
        );
        assert!(turn.output.contains("plan    status core-engine"));
        assert_eq!(session.prompt(), "omniterm");
    }

    #[test]
    fn dangerous_plans_need_the_phrase_typed_and_yes_is_not_enough() {
        let mut session = session();
        let turn = session.handle("deploy core-engine 2.0.0 to production at 100%");
        assert!(
            turn.output
                .contains("DANGER: it sends 100% of production traffic")
        );
        assert_eq!(session.prompt(), "type `deploy core-engine` to confirm");
        assert_eq!(
            session.handle("yes").output,
            "cancelled: the confirmation did not match; nothing ran"
        );
        session.handle("deploy core-engine 2.0.0 to production at 100%");
        assert!(
            session
                .handle("deploy core-engine")
                .output
                .starts_with("confirmed:")
        );

        let turn = session.handle("roll back everything");
        assert!(turn.output.contains("DANGER:"), "{}", turn.output);
        assert_eq!(session.prompt(), "type `rollback everything` to confirm");
        session.handle("no");

        let turn = session.handle("scale the gateway to 0");
        assert!(
            turn.output.contains("DANGER: it scales to zero"),
            "{}",
            turn.output
        );
        session.handle("no");
        let turn = session.handle("scale the gateway to 500 replicas");
        assert!(
            turn.output.contains("beyond the maximum of 50"),
            "{}",
            turn.output
        );
    }

    #[test]
    fn a_missing_target_is_asked_for_and_the_answer_completes_the_command() {
        let mut session = session();
        let turn = session.handle("deploy version 1.4.2");
        assert!(turn.output.contains("which service?"), "{}", turn.output);
        assert_eq!(session.prompt(), "answer");
        let turn = session.handle("the gateway");
        assert!(
            turn.output.contains("plan    deploy proxy-gateway 1.4.2"),
            "{}",
            turn.output
        );
        assert_eq!(session.prompt(), "proceed? [y/N]");
        assert_eq!(
            session.handle("never mind").output,
            "cancelled: nothing ran"
        );
    }

    #[test]
    fn read_only_and_dry_runs_need_no_confirmation() {
        let mut session = session();
        let turn = session.handle("show me the gateway logs from the last 5 minutes");
        assert!(
            turn.output
                .contains("read-only: would run `logs proxy-gateway")
        );
        let turn = session.handle("what would happen if I rolled back the engine? dry run");
        assert!(
            turn.output.contains("dry run: changes nothing"),
            "{}",
            turn.output
        );
        assert_eq!(session.prompt(), "omniterm");
    }

    #[test]
    fn unknown_help_refusals_and_exit() {
        let mut session = session();
        let turn = session.handle("rm -rf /");
        assert!(turn.output.starts_with("not understood: nothing will run"));
        assert!(
            session
                .handle("help")
                .output
                .contains("deploy    deploy the engine")
        );
        let help = session.handle("how do I scale?").output;
        assert!(help.contains("scale     scale the gateway"), "{help}");
        assert!(!help.contains("deploy    "), "{help}");
        let refused = session.handle(&"x".repeat(3000)).output;
        assert_eq!(
            refused,
            "refused: input is 3000 characters long; the limit is 2048"
        );
        session.handle("scale the gateway to 3");
        let turn = session.handle("exit");
        assert!(turn.exit);
        assert_eq!(turn.output, "cancelled: nothing ran\nbye");
    }

    #[test]
    fn payloads_never_appear_in_the_output() {
        let mut session = session();
        let output = session.handle("encrypt 'hunter2' with key payments").output;
        assert!(output.contains("--payload <redacted>"), "{output}");
        assert!(!output.contains("hunter2"), "{output}");
    }

    #[test]
    fn versions_seen_are_offered_to_completion() {
        let mut session = session();
        session.handle("deploy core-engine 1.7.0-rc.1");
        let versions = session.versions();
        assert!(versions.lock().unwrap().contains("1.7.0-rc.1"));
    }

    #[test]
    fn colour_is_emitted_only_when_asked() {
        let mut coloured = Session::new(
            Interpreter::new(Limits::default()),
            Limits::default(),
            Palette::new(true),
        );
        assert!(coloured.handle("health").output.contains("\u{1b}["));
        assert!(!session().handle("health").output.contains('\u{1b}'));
    }
}
