//! History that never keeps a payload: every line is stored in its redacted form.

use reedline::{History, HistoryItem, HistoryItemId, HistorySessionId, ReedlineError, SearchQuery};

use crate::nl::Interpreter;

/// What is stored instead of a line the interpreter refused (too long to inspect).
const REFUSED: &str = "# (a line over the length limit: not kept)";

/// The line as it may be stored: payloads and quoted text replaced by `<redacted>`.
pub fn redacted(interpreter: &Interpreter, line: &str) -> String {
    interpreter.interpret(line).map_or_else(
        |_| REFUSED.to_owned(),
        |interpretation| interpretation.redacted,
    )
}

/// Wraps a [`History`] so that what reaches it is redacted first.
pub(super) struct RedactingHistory<H> {
    inner: H,
    interpreter: Interpreter,
}

impl<H: History> RedactingHistory<H> {
    /// Redacts with `interpreter` before `inner` sees a line.
    pub(super) fn new(inner: H, interpreter: Interpreter) -> Self {
        Self { inner, interpreter }
    }
}

type Result<T> = std::result::Result<T, ReedlineError>;

impl<H: History> History for RedactingHistory<H> {
    fn save(&mut self, mut item: HistoryItem) -> Result<HistoryItem> {
        item.command_line = redacted(&self.interpreter, &item.command_line);
        self.inner.save(item)
    }

    fn load(&self, id: HistoryItemId) -> Result<HistoryItem> {
        self.inner.load(id)
    }

    fn count(&self, query: SearchQuery) -> Result<i64> {
        self.inner.count(query)
    }

    fn search(&self, query: SearchQuery) -> Result<Vec<HistoryItem>> {
        self.inner.search(query)
    }

    fn update(
        &mut self,
        id: HistoryItemId,
        updater: &dyn Fn(HistoryItem) -> HistoryItem,
    ) -> Result<()> {
        let interpreter = &self.interpreter;
        self.inner.update(id, &|item| {
            let mut item = updater(item);
            item.command_line = redacted(interpreter, &item.command_line);
            item
        })
    }

    fn clear(&mut self) -> Result<()> {
        self.inner.clear()
    }

    fn delete(&mut self, id: HistoryItemId) -> Result<()> {
        self.inner.delete(id)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.inner.sync()
    }

    fn session(&self) -> Option<HistorySessionId> {
        self.inner.session()
    }
}

#[cfg(test)]
mod tests {
    use reedline::{FileBackedHistory, SearchDirection};

    use super::*;
    use crate::nl::Limits;

    #[test]
    fn saved_lines_reach_the_file_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history");
        let interpreter = Interpreter::new(Limits::default());
        let inner = FileBackedHistory::with_file(100, path.clone()).unwrap();
        let mut history = RedactingHistory::new(inner, interpreter);
        for line in [
            "encrypt 'hunter2' with key payments",
            "encrypt this: hunter3",
            "deploy core-engine 1.4.2",
            &"s3cret ".repeat(400),
        ] {
            history.save(HistoryItem::from_command_line(line)).unwrap();
        }
        history.sync().unwrap();
        let stored = std::fs::read_to_string(&path).unwrap();
        for secret in ["hunter2", "hunter3", "s3cret"] {
            assert!(!stored.contains(secret), "{secret} in {stored}");
        }
        assert!(stored.contains("encrypt '<redacted>' with key payments"));
        assert!(stored.contains("deploy core-engine 1.4.2"));
        assert!(stored.contains(REFUSED));
        let items = history
            .search(SearchQuery::everything(SearchDirection::Forward, None))
            .unwrap();
        assert_eq!(items.len(), 4);
    }
}
