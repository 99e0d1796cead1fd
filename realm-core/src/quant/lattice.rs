//! The lattices of the IQ1-IQ3 types as quantizers search them: every grid
//! point as per-coordinate levels, and for every point off the grid the
//! grid points nearest to it.
//!
//! A value group quantized to one of these types is first rounded to
//! levels `l` per coordinate (the value `2 l + 1` at the group's scale).
//! The levels of a point pack into an index (`bits` per coordinate); if
//! that index is a grid point it is kept, and otherwise the quantizer picks
//! the best of the grid points nearest to it. ggml computes the same tables
//! (`iq2xs_init_impl`, `iq3xs_init_impl`): a point's neighbours are the
//! grid points at its `nwant` smallest squared distances (in `2 l + 1`
//! units), ordered by distance and then by grid index, which fixes the
//! order the quantizers try them in and so which of two equally good
//! points wins.
//!
//! The grids are those of [`super::iq_grids`], read back into levels; each
//! table is built once a process, on first use.

use std::sync::OnceLock;

use super::iq_grids::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};

/// Where a packed point stands: on the grid, or off it with its nearest
/// grid points at `neighbours[start..start + len]`.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// The grid point's index.
    Point(u16),
    /// The range of its neighbours.
    Near { start: u32, len: u32 },
}

/// A lattice's points and neighbour lists.
#[derive(Debug)]
pub(super) struct Lattice {
    /// Coordinates a point (4 or 8).
    dim: usize,
    /// Bits a coordinate's level takes in a packed point.
    bits: u32,
    /// Each grid point's coordinates as `2 l + 1` (the first `dim` used).
    points: Vec<[i8; 8]>,
    /// Every packed point's slot.
    slots: Vec<Slot>,
    /// The neighbour lists, end to end.
    neighbours: Vec<u16>,
}

impl Lattice {
    /// Builds the tables of a grid given as levels a point, for packed
    /// points below `packed_points`, keeping the grid points at the `nwant`
    /// smallest distances of each point off the grid.
    fn build(
        levels: &[[u8; 8]],
        dim: usize,
        bits: u32,
        packed_points: usize,
        nwant: usize,
    ) -> Self {
        let points: Vec<[i8; 8]> = levels.iter().map(|l| l.map(|l| 2 * l as i8 + 1)).collect();
        let mut slots = vec![Slot::Near { start: 0, len: 0 }; packed_points];
        for (j, l) in levels.iter().enumerate() {
            let u = pack(&l[..dim], bits);
            slots[u] = Slot::Point(j as u16);
        }
        let mut neighbours = Vec::new();
        let mut d2 = vec![0i32; points.len()];
        for (u, slot) in slots.iter_mut().enumerate() {
            if matches!(slot, Slot::Point(_)) {
                continue;
            }
            let mut pos = [0i32; 8];
            for (k, p) in pos[..dim].iter_mut().enumerate() {
                *p = 2 * ((u >> (bits as usize * k)) & ((1 << bits) - 1)) as i32 + 1;
            }
            for (d, point) in d2.iter_mut().zip(&points) {
                *d = point[..dim]
                    .iter()
                    .zip(&pos)
                    .map(|(&g, &p)| (i32::from(g) - p) * (i32::from(g) - p))
                    .sum();
            }
            // The `nwant` smallest distinct distances, ascending.
            let mut smallest: Vec<i32> = Vec::with_capacity(nwant + 1);
            for &d in &d2 {
                if let Err(at) = smallest.binary_search(&d) {
                    if at < nwant {
                        smallest.insert(at, d);
                        smallest.truncate(nwant);
                    }
                }
            }
            let limit = smallest.last().copied().unwrap_or(i32::MAX);
            let start = neighbours.len();
            let mut near: Vec<(i32, u16)> = d2
                .iter()
                .enumerate()
                .filter(|&(_, &d)| d <= limit)
                .map(|(j, &d)| (d, j as u16))
                .collect();
            near.sort_unstable();
            neighbours.extend(near.iter().map(|&(_, j)| j));
            *slot = Slot::Near {
                start: start as u32,
                len: (neighbours.len() - start) as u32,
            };
        }
        Self {
            dim,
            bits,
            points,
            slots,
            neighbours,
        }
    }

    /// Coordinates a point.
    pub(super) fn dim(&self) -> usize {
        self.dim
    }

    /// Grid point `j`'s coordinates as `2 l + 1`.
    pub(super) fn point(&self, j: u16) -> &[i8] {
        &self.points[usize::from(j)][..self.dim]
    }

    /// The grid index of the point with these levels, or its neighbour
    /// list if it is off the grid. Levels at or above `2^bits` (never
    /// produced by the quantizers' clamps) read as an empty neighbour list.
    pub(super) fn find(&self, levels: &[i8]) -> Result<u16, &[u16]> {
        let mut u = 0usize;
        for (k, &l) in levels.iter().enumerate() {
            if l < 0 || l as u32 >= 1 << self.bits {
                return Err(&[]);
            }
            u |= (l as usize) << (self.bits as usize * k);
        }
        match self.slots.get(u) {
            Some(&Slot::Point(j)) => Ok(j),
            Some(&Slot::Near { start, len }) => {
                Err(&self.neighbours[start as usize..(start + len) as usize])
            }
            None => Err(&[]),
        }
    }

    /// Writes grid point `j`'s levels, `(g - 1) / 2` for each coordinate
    /// `g`, to `levels`.
    pub(super) fn levels_of(&self, j: u16, levels: &mut [i8]) {
        for (l, &g) in levels.iter_mut().zip(self.point(j)) {
            *l = (g - 1) / 2;
        }
    }
}

/// The index of levels `l` at `bits` a coordinate.
fn pack(l: &[u8], bits: u32) -> usize {
    l.iter()
        .enumerate()
        .map(|(k, &l)| usize::from(l) << (bits as usize * k))
        .sum()
}

/// A grid of 8-byte entries as levels, each byte's level its place in
/// `values`.
fn levels8(grid: &[u64], values: &[u8]) -> Vec<[u8; 8]> {
    grid.iter()
        .map(|e| {
            e.to_le_bytes()
                .map(|b| values.iter().position(|&v| v == b).unwrap_or(0) as u8)
        })
        .collect()
}

/// A grid of 4-byte entries as levels (the last four unused).
fn levels4(grid: &[u32], values: &[u8]) -> Vec<[u8; 8]> {
    grid.iter()
        .map(|e| {
            let b = e.to_le_bytes();
            let mut l = [0u8; 8];
            for (l, b) in l.iter_mut().zip(b) {
                *l = values.iter().position(|&v| v == b).unwrap_or(0) as u8;
            }
            l
        })
        .collect()
}

/// IQ2's three magnitudes, as its grids hold them.
const IQ2_VALUES: [u8; 3] = [0x08, 0x19, 0x2b];
/// IQ3_XXS's eight magnitudes.
const IQ3XXS_VALUES: [u8; 8] = [4, 12, 20, 28, 36, 44, 52, 62];
/// IQ3_S's eight magnitudes, `2 l + 1`.
const IQ3S_VALUES: [u8; 8] = [1, 3, 5, 7, 9, 11, 13, 15];
/// IQ1's values -1, 0 and 1 as bytes.
const IQ1_VALUES: [u8; 3] = [0xff, 0x00, 0x01];

/// Packed 8-coordinate points at 2 bits a coordinate whose levels are at
/// most 2: every index up to `0xaaaa` (ggml's `kmap_size`, 43692).
const PACKED8: usize = 0xaaaa + 2;
/// Packed 4-coordinate points at 3 bits a coordinate.
const PACKED4: usize = 1 << 12;

/// IQ2_XXS's lattice: 256 points, neighbours at the 2 nearest distances.
pub(super) fn iq2xxs() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&levels8(&IQ2XXS_GRID, &IQ2_VALUES), 8, 2, PACKED8, 2))
}

/// IQ2_XS's lattice: 512 points, neighbours at the 2 nearest distances.
pub(super) fn iq2xs() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&levels8(&IQ2XS_GRID, &IQ2_VALUES), 8, 2, PACKED8, 2))
}

/// IQ2_S's lattice: 1024 points, neighbours at the nearest distance.
pub(super) fn iq2s() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&levels8(&IQ2S_GRID, &IQ2_VALUES), 8, 2, PACKED8, 1))
}

/// IQ1_S's and IQ1_M's lattice: 2048 points of -1, 0 and 1 (levels 0, 1
/// and 2), neighbours at the 3 nearest distances.
pub(super) fn iq1s() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&levels8(&IQ1S_GRID, &IQ1_VALUES), 8, 2, PACKED8, 3))
}

/// IQ3_XXS's lattice: 256 4-value points, neighbours at the 2 nearest
/// distances.
pub(super) fn iq3xxs() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&levels4(&IQ3XXS_GRID, &IQ3XXS_VALUES), 4, 3, PACKED4, 2))
}

/// IQ3_S's lattice: 512 4-value points, neighbours at the 3 nearest
/// distances.
pub(super) fn iq3s() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&levels4(&IQ3S_GRID, &IQ3S_VALUES), 4, 3, PACKED4, 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every grid entry reads back as levels that pack to a distinct
    /// index: no byte outside the type's values, no two equal points.
    #[test]
    fn grids_read_back_as_distinct_levels() {
        for (name, lattice, n) in [
            ("iq2_xxs", iq2xxs(), 256),
            ("iq2_xs", iq2xs(), 512),
            ("iq2_s", iq2s(), 1024),
            ("iq1_s", iq1s(), 2048),
            ("iq3_xxs", iq3xxs(), 256),
            ("iq3_s", iq3s(), 512),
        ] {
            let on_grid = lattice
                .slots
                .iter()
                .filter(|s| matches!(s, Slot::Point(_)))
                .count();
            assert_eq!(on_grid, n, "{name}");
            for j in 0..n as u16 {
                let mut l = [0i8; 8];
                lattice.levels_of(j, &mut l[..lattice.dim]);
                assert_eq!(lattice.find(&l[..lattice.dim]), Ok(j), "{name} point {j}");
            }
        }
        // The byte values all map: a byte outside them would read as level
        // 0 and collide with another point, which the count above catches.
    }

    /// A point off the grid lists grid points in order of distance, the
    /// nearest first, and nothing on the grid lists neighbours.
    #[test]
    fn neighbours_are_sorted_by_distance() {
        let lattice = iq3xxs();
        let mut seen = 0;
        for u in 0..PACKED4 {
            let l: Vec<i8> = (0..4).map(|k| ((u >> (3 * k)) & 7) as i8).collect();
            let Err(near) = lattice.find(&l) else {
                continue;
            };
            seen += 1;
            assert!(!near.is_empty());
            let d2 = |j: u16| -> i32 {
                lattice
                    .point(j)
                    .iter()
                    .zip(&l)
                    .map(|(&g, &l)| (i32::from(g) - (2 * i32::from(l) + 1)).pow(2))
                    .sum()
            };
            let dists: Vec<(i32, u16)> = near.iter().map(|&j| (d2(j), j)).collect();
            assert!(dists.windows(2).all(|w| w[0] < w[1]), "{u}: {dists:?}");
            // Nothing nearer than the first is left out.
            let nearest = (0..256).map(d2).min().unwrap();
            assert_eq!(dists[0].0, nearest);
        }
        assert_eq!(seen, PACKED4 - 256);
    }
}
