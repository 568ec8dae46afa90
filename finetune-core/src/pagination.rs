//! Following a cursor-paged listing to its end, written once for every
//! backend (OpenAI and Azure OpenAI events and checkpoints, ARM's
//! `nextLink`, Bedrock's `nextToken`).

use std::collections::HashSet;
use std::future::Future;

use crate::error::{Error, Result};
use crate::job::Page;

/// What to do when a server answers a cursor it answered before (which,
/// followed, would loop forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepeatedCursor {
    /// Keep what was read and stop: the listing is best effort.
    Stop,
    /// Fail with a provider error naming the listing.
    Fail,
}

/// Reads every page: `fetch(None)` returns the first, `fetch(Some(cursor))`
/// the one after `cursor`, until a page has no [`Page::next`]. At most
/// `max_pages` pages are read; a repeated cursor is handled per `repeated`.
pub async fn collect_pages<T, F, Fut>(
    what: &str,
    max_pages: usize,
    repeated: RepeatedCursor,
    mut fetch: F,
) -> Result<Vec<T>>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<Page<T>>>,
{
    let mut all = Vec::new();
    let mut cursor = None;
    let mut seen = HashSet::new();
    for _ in 0..max_pages {
        let page = fetch(cursor.take()).await?;
        all.extend(page.items);
        let Some(next) = page.next else { break };
        if !seen.insert(next.clone()) {
            match repeated {
                RepeatedCursor::Stop => break,
                RepeatedCursor::Fail => {
                    return Err(Error::Provider {
                        status: None,
                        code: Some("repeated_cursor".into()),
                        message: format!("{what}: the server answered the cursor `{next}` twice"),
                        param: None,
                    });
                }
            }
        }
        cursor = Some(next);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(
        cursors: &'static [Option<&'static str>],
    ) -> impl FnMut(Option<String>) -> std::future::Ready<Result<Page<usize>>> {
        let mut calls = 0;
        move |_cursor| {
            let next = cursors[calls].map(str::to_owned);
            calls += 1;
            std::future::ready(Ok(Page { items: vec![calls], next }))
        }
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map_or_else(|e| panic!("{e}"), |rt| rt.block_on(f))
    }

    #[test]
    fn follows_cursors_to_the_last_page() {
        let got =
            run(collect_pages("x", 10, RepeatedCursor::Fail, pages(&[Some("a"), Some("b"), None])));
        assert_eq!(got.ok(), Some(vec![1, 2, 3]));
    }

    #[test]
    fn a_repeated_cursor_stops_or_fails() {
        let looping: &[Option<&str>] = &[Some("a"), Some("a"), Some("a")];
        let got = run(collect_pages("x", 10, RepeatedCursor::Stop, pages(looping)));
        assert_eq!(got.ok(), Some(vec![1, 2]));
        let err = run(collect_pages("events", 10, RepeatedCursor::Fail, pages(looping)));
        assert!(err.is_err_and(|e| {
            e.to_string().contains("events: the server answered the cursor `a` twice")
        }));
    }

    #[test]
    fn at_most_max_pages_are_read() {
        let endless: &[Option<&str>] = &[Some("a"), Some("b"), Some("c"), Some("d")];
        let got = run(collect_pages("x", 2, RepeatedCursor::Fail, pages(endless)));
        assert_eq!(got.ok(), Some(vec![1, 2]));
    }
}
