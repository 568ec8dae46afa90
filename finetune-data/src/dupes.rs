//! Exact duplicate detection in bounded memory.
//!
//! Every row's example hash goes into a buffer of fixed size; a full buffer
//! is sorted and written to an anonymous temporary file (a "run"). At the
//! end the runs are merged in hash order, so rows with the same hash come
//! together, earliest row first. Memory stays at the buffer's size (plus a
//! small read buffer per run) however many rows there are: about 24 bytes a
//! row go to disk instead of ~40 bytes a row into a hash map.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

/// One row: its example hash, record number and physical line (`u64::MAX`
/// when the format has no lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub(crate) hash: u64,
    pub(crate) row: u64,
    pub(crate) line: u64,
}

const ENTRY_BYTES: usize = 24;

/// Rows buffered before a run is written: 3 MiB of entries.
pub(crate) const DEFAULT_BUFFER_ENTRIES: usize = 1 << 17;

/// The read buffer of each run while merging (1,000 runs, 131 million rows,
/// take 16 MiB).
const RUN_READ_BUFFER: usize = 1 << 14;

#[derive(Debug)]
struct Run {
    file: File,
    len: u64,
}

/// Collects entries, spilling sorted runs to disk.
#[derive(Debug)]
pub(crate) struct DuplicateFinder {
    buffer: Vec<Entry>,
    cap: usize,
    runs: Vec<Run>,
    /// Set when a spill failed: from then on everything stays in memory.
    in_memory_only: bool,
}

impl DuplicateFinder {
    pub(crate) fn new(cap: usize) -> Self {
        Self { buffer: Vec::new(), cap: cap.max(1), runs: Vec::new(), in_memory_only: false }
    }

    pub(crate) fn push(&mut self, entry: Entry) {
        // No room for a temporary file: correctness first, the rest stays
        // in memory.
        if self.buffer.len() >= self.cap && !self.in_memory_only && self.spill().is_err() {
            self.in_memory_only = true;
        }
        self.buffer.push(entry);
    }

    fn spill(&mut self) -> std::io::Result<()> {
        self.buffer.sort_unstable();
        let mut file = tempfile::tempfile()?;
        {
            let mut out = BufWriter::with_capacity(1 << 16, &mut file);
            for e in &self.buffer {
                out.write_all(&e.hash.to_le_bytes())?;
                out.write_all(&e.row.to_le_bytes())?;
                out.write_all(&e.line.to_le_bytes())?;
            }
            out.flush()?;
        }
        file.seek(SeekFrom::Start(0))?;
        self.runs.push(Run { file, len: self.buffer.len() as u64 });
        self.buffer.clear();
        Ok(())
    }

    /// How many runs went to disk (for tests).
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Every entry, by hash then row.
    pub(crate) fn into_sorted(mut self) -> SortedEntries {
        self.buffer.sort_unstable();
        let mut readers: Vec<RunReader> = self
            .runs
            .into_iter()
            .map(|r| RunReader {
                left: r.len,
                input: BufReader::with_capacity(RUN_READ_BUFFER, r.file),
            })
            .collect();
        let mut heap = BinaryHeap::with_capacity(readers.len() + 1);
        for (i, reader) in readers.iter_mut().enumerate() {
            if let Some(e) = reader.next() {
                heap.push(Reverse((e, i)));
            }
        }
        let memory = self.buffer.into_iter();
        SortedEntries { readers, heap, memory, pending: None }
    }
}

struct RunReader {
    left: u64,
    input: BufReader<File>,
}

impl RunReader {
    fn next(&mut self) -> Option<Entry> {
        if self.left == 0 {
            return None;
        }
        let mut bytes = [0u8; ENTRY_BYTES];
        // A run we wrote ourselves that cannot be read back ends early.
        self.input.read_exact(&mut bytes).ok()?;
        self.left -= 1;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Some(Entry { hash: word(0), row: word(1), line: word(2) })
    }
}

/// The merge of the runs and the in-memory rest.
pub(crate) struct SortedEntries {
    readers: Vec<RunReader>,
    heap: BinaryHeap<Reverse<(Entry, usize)>>,
    memory: std::vec::IntoIter<Entry>,
    pending: Option<Entry>,
}

impl Iterator for SortedEntries {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if self.pending.is_none() {
            self.pending = self.memory.next();
        }
        let from_runs = self.heap.peek().map(|Reverse((e, _))| *e);
        match (from_runs, self.pending) {
            (Some(r), Some(m)) if m < r => self.pending.take(),
            (Some(_), _) => {
                let Reverse((e, i)) = self.heap.pop()?;
                if let Some(next) = self.readers[i].next() {
                    self.heap.push(Reverse((next, i)));
                }
                Some(e)
            }
            (None, _) => self.pending.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_runs_come_out_sorted_and_complete() {
        let mut finder = DuplicateFinder::new(7);
        let mut expected = Vec::new();
        for row in 0..100u64 {
            let e = Entry { hash: (row * 37) % 23, row, line: row + 1 };
            expected.push(e);
            finder.push(e);
        }
        assert_eq!(finder.runs(), 14);
        expected.sort_unstable();
        let got: Vec<Entry> = finder.into_sorted().collect();
        assert_eq!(got, expected);
    }
}
