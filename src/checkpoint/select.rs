//! Which tensors of a dense checkpoint get quantized.

use safetensors::Dtype as StDtype;

use super::file::TensorEntry;
use crate::quant::BLOCK;

/// Name substrings kept in their original dtype by default (case-insensitive), as SeedVR2's
/// `PRESERVED_LAYER_PATTERNS` does (shared/reference/seedvr2-and-peers.md §2): biases, norms,
/// embeddings, heads. `head` also matches `heads`, as in SeedVR2.
pub const PRESERVED_PATTERNS: &[&str] = &[
    "bias",
    "norm",
    "embed",
    "ln_",
    "layernorm",
    "groupnorm",
    "rmsnorm",
    "head",
    "pos_embed",
    "patch_embed",
    "time_embed",
];

/// User overrides: `--include` and `--exclude` glob patterns (`*` any run of characters, `?` one),
/// matched against the tensor name and against its module name (the name without `.weight`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Quantize matching tensors even where the default would keep them.
    pub include: Vec<String>,
    /// Keep matching tensors unquantized; wins over `include`.
    pub exclude: Vec<String>,
}

/// What happens to one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The tensor.
    pub name: String,
    /// Quantize it (true) or copy it unchanged.
    pub quantize: bool,
    /// Why, in words (`--dry-run` prints it).
    pub reason: String,
    /// Whether an `--include` pattern asked for it (so an unquantizable tensor is an error).
    pub forced: bool,
}

/// `*` and `?` glob match (fnmatch without character classes), iterative with one backtrack point.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The module a tensor belongs to: its name without a trailing `.weight`.
pub fn module_of(name: &str) -> &str {
    name.strip_suffix(".weight").unwrap_or(name)
}

impl Selection {
    fn matches(patterns: &[String], name: &str) -> Option<String> {
        patterns
            .iter()
            .find(|g| glob_match(g, name) || glob_match(g, module_of(name)))
            .cloned()
    }

    /// The decision for one tensor of a dense checkpoint.
    pub fn decide(&self, e: &TensorEntry) -> Decision {
        let name = &e.name;
        let d = |quantize: bool, forced: bool, reason: String| Decision {
            name: name.clone(),
            quantize,
            reason,
            forced,
        };
        if let Some(g) = Self::matches(&self.exclude, name) {
            return d(false, false, format!("kept: --exclude {g}"));
        }
        if let Some(g) = Self::matches(&self.include, name) {
            return d(true, true, format!("quantized: --include {g}"));
        }
        if !name.ends_with(".weight") && name != "weight" {
            return d(false, false, "kept: not a .weight".into());
        }
        if !matches!(e.dtype, StDtype::F32 | StDtype::F16 | StDtype::BF16) {
            return d(false, false, format!("kept: dtype {}", e.dtype));
        }
        if e.shape.len() != 2 {
            return d(false, false, format!("kept: {}-D", e.shape.len()));
        }
        if e.shape[1] % BLOCK != 0 {
            return d(
                false,
                false,
                format!("kept: K = {} is not a multiple of 16", e.shape[1]),
            );
        }
        let lower = name.to_lowercase();
        if let Some(p) = PRESERVED_PATTERNS.iter().find(|p| lower.contains(*p)) {
            return d(false, false, format!("kept: preserved pattern `{p}`"));
        }
        d(true, false, "quantized: 2-D weight, K multiple of 16".into())
    }
}
