//! Host buffers as the CUDA driver pins them: whole pages. Used by the overlapped block copier
//! (`block_stream`, CUDA only); kept apart so that its page arithmetic is tested on every build.

/// Registration works on whole pages. Only the pages lying wholly inside a buffer are
/// registered (its interior), never a partial first or last page: those pages also hold other
/// allocations, and a host range that is partly registered makes the driver fail a copy from
/// it (`CUDA_ERROR_INVALID_VALUE`) or copy wrong bytes. That is what the H100 runs of
/// `cuda_block_stream` (2026-12-07) showed when whole pages around the buffers were registered:
/// later copies of unrelated tensors (an fp8 model's load, its forward) failed or came out
/// wrong. Copies from a buffer are therefore split at its page boundaries ([`page_pieces`]):
/// the interior from pinned memory, the partial pages from pageable memory.
/// 4 KiB, x86-64's page: on a system with larger pages a registration may fail, and the bytes
/// stay pageable (counted in `failed_bytes`; copies from them are correct, not overlapped).
pub(crate) const PAGE: usize = 4096;

/// `[start, start + len)` split at the page boundaries where its registration can change: the
/// partial first page, the whole pages, the partial last page (each present only if non-empty).
/// Every piece is then wholly registered or wholly pageable.
pub(crate) fn page_pieces(start: usize, len: usize) -> impl Iterator<Item = (usize, usize)> {
    let end = start + len;
    let first_full = start.div_ceil(PAGE) * PAGE;
    let last_full = end / PAGE * PAGE;
    let cuts: Vec<usize> = if first_full < last_full {
        vec![start, first_full, last_full, end]
    } else {
        // no whole page inside: at most one page boundary crossed
        vec![start, first_full.min(end), end]
    };
    (0..cuts.len() - 1)
        .map(move |i| (cuts[i], cuts[i + 1] - cuts[i]))
        .filter(|&(_, len)| len > 0)
}

/// The pages wholly inside `[start, start + len)`, as `(first, end)` byte addresses; `None`
/// when no whole page lies inside.
pub(crate) fn interior(start: usize, len: usize) -> Option<(usize, usize)> {
    let (first, end) = (start.div_ceil(PAGE) * PAGE, (start + len) / PAGE * PAGE);
    (first < end).then_some((first, end))
}

#[cfg(test)]
mod tests {
    use super::{interior, page_pieces, PAGE};

    fn pieces(start: usize, len: usize) -> Vec<(usize, usize)> {
        page_pieces(start, len).collect()
    }

    #[test]
    fn interiors_are_the_whole_pages_inside() {
        let p = PAGE;
        assert_eq!(interior(p + 1, 3 * p), Some((2 * p, 4 * p)));
        assert_eq!(interior(p, 2 * p), Some((p, 3 * p)));
        assert_eq!(interior(p + 1, p), None);
    }

    #[test]
    fn copies_split_at_the_page_boundaries() {
        let p = PAGE;
        // partial head, whole pages, partial tail
        assert_eq!(
            pieces(p + 10, 3 * p),
            vec![(p + 10, p - 10), (2 * p, 2 * p), (4 * p, 10)]
        );
        // aligned: one piece of whole pages
        assert_eq!(pieces(2 * p, 3 * p), vec![(2 * p, 3 * p)]);
        // inside one page, and across one boundary without a whole page
        assert_eq!(pieces(p + 5, 100), vec![(p + 5, 100)]);
        assert_eq!(pieces(2 * p - 8, 16), vec![(2 * p - 8, 8), (2 * p, 8)]);
        // the pieces always tile the range
        for (start, len) in [(0, 1), (7, 3 * p), (p - 1, 2), (5 * p, p + 1)] {
            let got = pieces(start, len);
            assert_eq!(got.first().unwrap().0, start);
            assert_eq!(got.iter().map(|(_, l)| l).sum::<usize>(), len);
            for w in got.windows(2) {
                assert_eq!(w[0].0 + w[0].1, w[1].0);
            }
        }
    }
}
