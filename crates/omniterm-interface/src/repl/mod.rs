//! `omniterm-interface repl`: the interpreter at a prompt.
//!
//! On a terminal it is a line editor ([`reedline`]) with history that keeps only redacted
//! lines ([`history`]), tab completion ([`complete`]) and coloured plans; with stdin not a
//! terminal it reads lines plainly, so it can be scripted. Either way each line goes
//! through the same [`session::Session`]: interpret, show the plan, wait for confirmation.

mod complete;
mod history;
mod session;

use std::borrow::Cow;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use reedline::{
    ColumnarMenu, Emacs, FileBackedHistory, KeyCode, KeyModifiers, MenuBuilder, Prompt,
    PromptEditMode, PromptHistorySearch, PromptHistorySearchStatus, Reedline, ReedlineEvent,
    ReedlineMenu, Signal, default_emacs_keybindings,
};

use crate::nl::{Interpreter, Limits};

pub use history::redacted;
pub use session::{Palette, SeenVersions, Session, Turn};

/// Lines of history kept.
const HISTORY_LINES: usize = 1000;

/// How the REPL runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where redacted history is kept (terminal mode only).
    pub history: PathBuf,
    /// Colour the output (only ever on a terminal).
    pub colour: bool,
    /// The interpreter's limits.
    pub limits: Limits,
}

/// Runs the REPL until `exit`, Ctrl-D or the end of stdin.
///
/// # Errors
/// When the terminal or the history file cannot be used.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let interpreter = Interpreter::new(options.limits);
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        interactive(options, interpreter)
    } else {
        scripted(options, interpreter)
    }
}

fn scripted(options: &Options, interpreter: Interpreter) -> anyhow::Result<()> {
    let mut session = Session::new(interpreter, options.limits, Palette::new(false));
    let mut stdout = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let turn = session.handle(&line.context("reading stdin")?);
        if !turn.output.is_empty() {
            writeln!(stdout, "{}", turn.output).context("writing stdout")?;
        }
        if turn.exit {
            break;
        }
    }
    Ok(())
}

fn interactive(options: &Options, interpreter: Interpreter) -> anyhow::Result<()> {
    if let Some(parent) = options.history.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = FileBackedHistory::with_file(HISTORY_LINES, options.history.clone())
        .with_context(|| format!("opening history {}", options.history.display()))?;
    let mut session = Session::new(
        interpreter.clone(),
        options.limits,
        Palette::new(options.colour),
    );
    // Versions already in the history are offered by completion from the start.
    for line in std::fs::read_to_string(&options.history)
        .unwrap_or_default()
        .lines()
        .rev()
        .take(HISTORY_LINES)
    {
        if let Ok(interpretation) = interpreter.interpret(line)
            && let Some(version) = interpretation.entities.version
        {
            session
                .versions()
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(version);
        }
    }
    let mut keybindings = default_emacs_keybindings();
    keybindings.add_binding(
        KeyModifiers::NONE,
        KeyCode::Tab,
        ReedlineEvent::UntilFound(vec![
            ReedlineEvent::Menu("completion_menu".to_owned()),
            ReedlineEvent::MenuNext,
        ]),
    );
    let menu = ColumnarMenu::default().with_name("completion_menu");
    let mut editor = Reedline::create()
        .with_history(Box::new(history::RedactingHistory::new(file, interpreter)))
        .with_completer(Box::new(complete::OmniCompleter::new(session.versions())))
        .with_menu(ReedlineMenu::EngineCompleter(Box::new(menu)))
        .with_edit_mode(Box::new(Emacs::new(keybindings)));

    println!(
        "omniterm: plain English in, a plan out; nothing runs without your confirmation. \
         `help` for examples, `exit` to leave."
    );
    loop {
        let prompt = OmniPrompt(session.prompt());
        match editor.read_line(&prompt).context("reading the terminal")? {
            Signal::Success(line) => {
                let turn = session.handle(&line);
                if !turn.output.is_empty() {
                    println!("{}", turn.output);
                }
                if turn.exit {
                    break;
                }
            }
            Signal::CtrlC => {
                if let Some(message) = session.interrupt() {
                    println!("{message}");
                }
            }
            Signal::CtrlD => break,
            _ => {}
        }
    }
    editor.sync_history().context("writing history")?;
    Ok(())
}

/// `omniterm> `, or what the session waits for.
struct OmniPrompt(String);

impl Prompt for OmniPrompt {
    fn render_prompt_left(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.0)
    }

    fn render_prompt_right(&self) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn render_prompt_indicator(&self, _mode: PromptEditMode) -> Cow<'_, str> {
        Cow::Borrowed("> ")
    }

    fn render_prompt_multiline_indicator(&self) -> Cow<'_, str> {
        Cow::Borrowed("… ")
    }

    fn render_prompt_history_search_indicator(&self, search: PromptHistorySearch) -> Cow<'_, str> {
        let failing = match search.status {
            PromptHistorySearchStatus::Passing => "",
            PromptHistorySearchStatus::Failing => "failing ",
        };
        Cow::Owned(format!("({failing}search: {}) ", search.term))
    }
}
