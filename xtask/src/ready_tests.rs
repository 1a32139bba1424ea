//! Tests of packs, the index and `lab fetch` on small hand-made labs (no kernel build).

use super::*;
