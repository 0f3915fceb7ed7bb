//! `omniterm-interface repl`: scripted on pipes, and interactive on a real pseudo-terminal
//! (the line editor, completion, confirmation and the redacted history file).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::pty::{Winsize, openpty};

const BIN: &str = env!("CARGO_BIN_EXE_omniterm-interface");
/// Long enough for a debug build on a loaded 2-core machine; only reached on failure.
const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn scripted_lines_get_plans_and_confirmations() {
    let mut child = Command::new(BIN)
        .arg("repl")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"scale the gateway to 3 replicas\nyes\nroll back everything\nyes\n\
              encrypt 'hunter2' with key payments\nexit\nstatus\n",
        )
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("confirmed: would run `scale proxy-gateway --replicas 3`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("type `rollback everything` to confirm"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cancelled: the confirmation did not match; nothing ran"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "no colour on a pipe: {stdout}");
    // `exit` ends the session: the line after it is never read.
    assert!(stdout.trim_end().ends_with("bye"), "{stdout}");
}

/// A child on a pseudo-terminal; everything it writes arrives on `output`.
struct Terminal {
    child: Child,
    input: File,
    output: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Terminal {
    fn spawn(args: &[&str]) -> Self {
        let size = Winsize {
            ws_row: 40,
            ws_col: 160,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(&size, None).unwrap();
        let slave = File::from(pty.slave);
        let child = Command::new(BIN)
            .args(args)
            .env("TERM", "xterm")
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave)
            .spawn()
            .unwrap();
        let mut reader = File::from(pty.master);
        let input = reader.try_clone().unwrap();
        let mut answerer = reader.try_clone().unwrap();
        let (sender, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0_u8; 4096];
            // Ends with EIO once the child has closed the terminal.
            while let Ok(read @ 1..) = reader.read(&mut buffer) {
                let chunk = buffer[..read].to_vec();
                // The line editor asks where the cursor is; a terminal answers.
                for _ in 0..count(&chunk, b"\x1b[6n") {
                    let _ = answerer.write_all(b"\x1b[1;1R");
                }
                if sender.send(chunk).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            input,
            output,
            seen: String::new(),
        }
    }

    fn type_keys(&mut self, keys: &str) {
        self.input.write_all(keys.as_bytes()).unwrap();
    }

    /// Waits until `needle` has appeared in the (ANSI-stripped) output since the last
    /// call; returns what appeared up to and including it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(at) = self.seen.find(needle) {
                let upto = at + needle.len();
                let before = self.seen[..upto].to_owned();
                self.seen.drain(..upto);
                return before;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&strip_ansi(&chunk)),
                Err(error) => panic!(
                    "{needle:?} never appeared ({error}); output:\n{}",
                    self.seen
                ),
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|window| *window == needle)
        .count()
}

/// Drops CSI and OSC escape sequences, keeping the text a person would see.
fn strip_ansi(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                for c in chars.by_ref() {
                    if c == '\u{7}' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn the_line_editor_completes_confirms_and_keeps_only_redacted_history() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("state").join("history");
    let mut terminal = Terminal::spawn(&["repl", "--history", history.to_str().unwrap()]);
    terminal.expect("omniterm>");

    terminal.type_keys("encrypt 'hunter2' with key payments\r");
    let plan = terminal.expect("--payload <redacted>");
    assert!(plan.contains("plan"), "{plan}");
    terminal.expect("omniterm>");

    // Tab opens the completion menu on the only service that fits; Enter takes it.
    terminal.type_keys("deploy co\t");
    terminal.expect("core-engine");
    terminal.type_keys("\r1.4.2\r");
    terminal.expect("plan    deploy core-engine 1.4.2");
    terminal.expect("proceed? [y/N]");
    terminal.type_keys("y\r");
    terminal.expect("confirmed: would run `deploy core-engine 1.4.2`");

    // Ctrl-C drops a pending plan.
    terminal.type_keys("scale the gateway to 0\r");
    terminal.expect("type `scale proxy-gateway` to confirm");
    // Ctrl-C only reaches the editor once it has put the terminal in raw mode, which it
    // does before drawing its prompt; a ^C typed earlier is the cooked terminal's.
    terminal.expect("to confirm> ");
    terminal.type_keys("\x03");
    terminal.expect("cancelled: nothing ran");

    terminal.type_keys("exit\r");
    terminal.expect("bye");
    let status = terminal.child.wait().unwrap();
    assert!(status.success(), "{status}");

    let stored = std::fs::read_to_string(&history).unwrap();
    assert!(!stored.contains("hunter2"), "{stored}");
    assert!(
        stored.contains("encrypt '<redacted>' with key payments"),
        "{stored}"
    );
    assert!(stored.contains("deploy core-engine 1.4.2"), "{stored}");
}

#[test]
fn an_unusable_history_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the history file should be.
    let mut terminal = Terminal::spawn(&["repl", "--history", dir.path().to_str().unwrap()]);
    terminal.expect("opening history");
    let status = terminal.child.wait().unwrap();
    assert!(!status.success());
}
