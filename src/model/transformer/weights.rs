//! Reads a model's weights for the native forward pass: raw GGUF blocks repacked into our
//! kernels' form straight from the mapped file, with no intermediate tensors. Each family's
//! optional parts (biases, Q/K norms, sandwich norms) and each file's layout (fused or separate
//! Q/K/V and gate/up, tied or separate output) are read wherever they are present.

use std::sync::Arc;

use super::config::Config;
use super::family::SlidingLayers;
use super::native::{NativeLayer, NativeTransformer, SideBySide};
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::dot::GROUP;
use crate::kernels::{MatrixShape, QuantMatrix, SpaceError, WeightFormat, WeightSpace};
use crate::model::gguf::{GgmlType, GgufFile};
use crate::model::Progress;

/// The native model of `file`, or `None` (nothing read) when some matrix is in a format our
/// kernels do not take: that file runs on candle's tensors.
pub(super) fn native_from_file(
    file: &GgufFile,
    config: &Config,
    context_length: usize,
    progress: Progress<'_>,
) -> Result<Option<NativeTransformer>> {
    let matrices = matrix_names(file, config);
    if let Some(err) = unreadable_matrix(file, &matrices) {
        return Err(err);
    }
    if !matrices.iter().all(|name| matrix_format(file, name).is_some()) {
        return Ok(None);
    }
    let total: u64 = matrices.iter().map(|n| file.tensor_bytes(n)).sum::<u64>().max(1);
    let mut reader = Reader { file, config, data: file.mapped(), plan: MatrixPlan::default() };
    let model = reader.plan_model()?;
    let inverse_frequencies = rope_tables(file, config, context_length)?;
    let repacked = reader.plan.repack(&reader.data, total, progress)?;
    let native = model.build(&repacked, config.clone(), inverse_frequencies);
    if !progress(1.0) {
        return Err(Error::load_cancelled());
    }
    Ok(Some(native))
}

/// The block format our kernels take for a GGUF type, if they take it.
pub fn weight_format(ggml_type: GgmlType) -> Option<WeightFormat> {
    Some(match ggml_type {
        GgmlType::Q4_0 => WeightFormat::Q4_0,
        GgmlType::Q4_1 => WeightFormat::Q4_1,
        GgmlType::Q5_0 => WeightFormat::Q5_0,
        GgmlType::Q5_1 => WeightFormat::Q5_1,
        GgmlType::Q8_0 => WeightFormat::Q8_0,
        GgmlType::Q2K => WeightFormat::Q2K,
        GgmlType::Q3K => WeightFormat::Q3K,
        GgmlType::Q4K => WeightFormat::Q4K,
        GgmlType::Q5K => WeightFormat::Q5K,
        GgmlType::Q6K => WeightFormat::Q6K,
        GgmlType::IQ4NL => WeightFormat::IQ4NL,
        GgmlType::IQ4XS => WeightFormat::IQ4XS,
        GgmlType::F16 => WeightFormat::F16,
        GgmlType::BF16 => WeightFormat::BF16,
        GgmlType::F32 => WeightFormat::F32,
        _ => return None,
    })
}

/// MAZE_STATUS_UNSUPPORTED for the first matrix that neither our kernels nor candle's tensors
/// read (IQ2_XXS, say), naming its type and the ones Maze does read.
fn unreadable_matrix(file: &GgufFile, matrices: &[String]) -> Option<Error> {
    let (name, ggml_type) = matrices.iter().find_map(|name| {
        let (ggml_type, _) = file.tensor_layout(name)?;
        (weight_format(ggml_type).is_none() && ggml_type.candle().is_none()).then_some((name, ggml_type))
    })?;
    let readable: Vec<&str> =
        GgmlType::all().filter(|t| weight_format(*t).is_some()).map(GgmlType::name).collect();
    Some(Error::new(
        ErrorKind::Unsupported,
        format!(
            "'{}': tensor '{name}' is {}, a tensor type Maze does not read (it reads {})",
            file.path().display(),
            ggml_type.name(),
            readable.join(", ")
        ),
    ))
}

fn matrix_format(file: &GgufFile, name: &str) -> Option<WeightFormat> {
    file.tensor_layout(name).and_then(|(dtype, _)| weight_format(dtype))
}

fn layer_tensor(layer: usize, name: &str) -> String {
    format!("blk.{layer}.{name}")
}

/// Whether the file has one fused `attn_qkv` matrix rather than Q, K and V (Phi-3).
fn fused_qkv(file: &GgufFile, layer: usize) -> bool {
    file.has_tensor(&layer_tensor(layer, "attn_qkv.weight"))
}

/// Whether the file's `ffn_up` holds the gate and up rows together (Phi-3: no `ffn_gate`).
fn fused_gate_up(file: &GgufFile, layer: usize) -> bool {
    !file.has_tensor(&layer_tensor(layer, "ffn_gate.weight"))
}

/// The output layer's matrix: its own, or the embedding table where the model ties them.
fn output_name(file: &GgufFile) -> &'static str {
    if file.has_tensor("output.weight") {
        "output.weight"
    } else {
        "token_embd.weight"
    }
}

/// Every matrix the native model reads (their bytes are the load's progress).
fn matrix_names(file: &GgufFile, config: &Config) -> Vec<String> {
    let mut names = vec!["token_embd.weight".to_string()];
    if output_name(file) == "output.weight" {
        names.push("output.weight".into());
    }
    for l in 0..config.n_layers {
        let attention: &[&str] = match fused_qkv(file, l) {
            true => &["attn_qkv", "attn_output"],
            false => &["attn_q", "attn_k", "attn_v", "attn_output"],
        };
        let ffn: &[&str] = match fused_gate_up(file, l) {
            true => &["ffn_up", "ffn_down"],
            false => &["ffn_gate", "ffn_up", "ffn_down"],
        };
        names.extend(attention.iter().chain(ffn).map(|t| layer_tensor(l, &format!("{t}.weight"))));
    }
    names
}

/// What the native model is made of before the matrices are repacked: indices into the plan.
struct ModelPlan {
    embeddings: usize,
    output: usize,
    output_norm: Vec<f32>,
    layers: Vec<LayerPlan>,
}

struct LayerPlan {
    attn_norm: Vec<f32>,
    qkv: Vec<usize>,
    qkv_bias: Option<Vec<f32>>,
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    wo: usize,
    wo_bias: Option<Vec<f32>>,
    post_attention_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate_up: Vec<usize>,
    down: usize,
    post_ffn_norm: Option<Vec<f32>>,
    rope_table: usize,
    window: Option<usize>,
}

impl ModelPlan {
    fn build(
        self,
        matrices: &[Arc<QuantMatrix>],
        config: Config,
        inverse_frequencies: Vec<Vec<f32>>,
    ) -> NativeTransformer {
        let side_by_side =
            |indices: Vec<usize>| SideBySide(indices.into_iter().map(|i| matrices[i].clone()).collect());
        let layers = self
            .layers
            .into_iter()
            .map(|p| NativeLayer {
                attn_norm: p.attn_norm,
                qkv: side_by_side(p.qkv),
                qkv_bias: p.qkv_bias,
                qk_norm: p.qk_norm,
                wo: matrices[p.wo].clone(),
                wo_bias: p.wo_bias,
                post_attention_norm: p.post_attention_norm,
                ffn_norm: p.ffn_norm,
                gate_up: side_by_side(p.gate_up),
                down: matrices[p.down].clone(),
                post_ffn_norm: p.post_ffn_norm,
                rope_table: p.rope_table,
                window: p.window,
            })
            .collect();
        NativeTransformer {
            config,
            embeddings: matrices[self.embeddings].clone(),
            output: matrices[self.output].clone(),
            output_norm: self.output_norm,
            layers,
            inverse_frequencies,
        }
    }
}

/// Plans every matrix of the model (checking each tensor's shape) and reads the small vectors.
struct Reader<'f> {
    file: &'f GgufFile,
    config: &'f Config,
    data: Arc<memmap2::Mmap>,
    plan: MatrixPlan,
}

/// A matrix of the file ready to plan: its format, its byte range in the map, its row count.
#[derive(Clone)]
struct Part {
    format: WeightFormat,
    range: std::ops::Range<usize>,
    rows: usize,
}

impl Reader<'_> {
    fn plan_model(&mut self) -> Result<ModelPlan> {
        let dim = self.config.dim;
        let embeddings_part = self.part("token_embd.weight", None, dim)?;
        let vocab = embeddings_part.rows;
        let embeddings = self.plan.add(&[embeddings_part], dim);
        let output = match output_name(self.file) {
            "output.weight" => {
                let part = self.part("output.weight", Some(vocab), dim)?;
                self.plan.add(&[part], dim)
            }
            // Tied: the output layer is the embedding table; one copy serves both.
            _ => embeddings,
        };
        let output_norm = self.vector("output_norm.weight", dim)?;
        let layers = (0..self.config.n_layers).map(|l| self.plan_layer(l)).collect::<Result<_>>()?;
        Ok(ModelPlan { embeddings, output, output_norm, layers })
    }

    fn plan_layer(&mut self, l: usize) -> Result<LayerPlan> {
        let c = self.config;
        let (dim, q_dim, kv_dim, ffn_dim) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let name = |t: &str| layer_tensor(l, t);
        let qkv = if fused_qkv(self.file, l) {
            let fused = self.part(&name("attn_qkv.weight"), Some(q_dim + 2 * kv_dim), dim)?;
            vec![self.plan.add(&[fused], dim)]
        } else {
            let parts = [("attn_q.weight", q_dim), ("attn_k.weight", kv_dim), ("attn_v.weight", kv_dim)]
                .map(|(t, rows)| self.part(&name(t), Some(rows), dim));
            let [q, k, v] = parts;
            self.plan.side_by_side(&[q?, k?, v?], dim)
        };
        let wo_part = self.part(&name("attn_output.weight"), Some(dim), q_dim)?;
        let wo = self.plan.add(&[wo_part], q_dim);
        let gate_up = if fused_gate_up(self.file, l) {
            let fused = self.part(&name("ffn_up.weight"), Some(2 * ffn_dim), dim)?;
            vec![self.plan.add(&[fused], dim)]
        } else {
            let gate = self.part(&name("ffn_gate.weight"), Some(ffn_dim), dim)?;
            let up = self.part(&name("ffn_up.weight"), Some(ffn_dim), dim)?;
            self.plan.side_by_side(&[gate, up], dim)
        };
        let down_part = self.part(&name("ffn_down.weight"), Some(dim), ffn_dim)?;
        let down = self.plan.add(&[down_part], ffn_dim);
        let sandwich = c.family.sandwich_norms;
        Ok(LayerPlan {
            attn_norm: self.vector(&name("attn_norm.weight"), dim)?,
            qkv,
            qkv_bias: self.qkv_bias(l)?,
            qk_norm: match c.family.qk_norm {
                true => Some((
                    self.vector(&name("attn_q_norm.weight"), c.head_dim)?,
                    self.vector(&name("attn_k_norm.weight"), c.head_dim)?,
                )),
                false => None,
            },
            wo,
            wo_bias: self.optional_vector(&name("attn_output.bias"), dim)?,
            post_attention_norm: self.required_if(sandwich, &name("post_attention_norm.weight"), dim)?,
            ffn_norm: self.vector(&name("ffn_norm.weight"), dim)?,
            gate_up,
            down,
            post_ffn_norm: self.required_if(sandwich, &name("post_ffw_norm.weight"), dim)?,
            rope_table: usize::from(c.local_layers[l] && has_local_rope_table(c)),
            window: c.window_of(l),
        })
    }

    /// Q, K and V biases side by side: one fused vector, or each present one (zeros for an
    /// absent part, as llama.cpp adds only the biases a file has); `None` without any.
    fn qkv_bias(&self, l: usize) -> Result<Option<Vec<f32>>> {
        let c = self.config;
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        if let Some(fused) = self.optional_vector(&layer_tensor(l, "attn_qkv.bias"), q_dim + 2 * kv_dim)? {
            return Ok(Some(fused));
        }
        let parts = [("attn_q.bias", q_dim), ("attn_k.bias", kv_dim), ("attn_v.bias", kv_dim)]
            .map(|(t, len)| self.optional_vector(&layer_tensor(l, t), len).map(|v| (v, len)));
        let mut parts_read = Vec::with_capacity(3);
        for part in parts {
            parts_read.push(part?);
        }
        if parts_read.iter().all(|(v, _)| v.is_none()) {
            return Ok(None);
        }
        Ok(Some(parts_read.into_iter().flat_map(|(v, len)| v.unwrap_or_else(|| vec![0.0; len])).collect()))
    }

    /// A matrix tensor, checked to be `rows` (or any number of rows, for the vocabulary) by
    /// `cols`, in a format our kernels take.
    fn part(&self, name: &str, rows: Option<usize>, cols: usize) -> Result<Part> {
        let file = self.file;
        let (dtype, dims) = file.tensor_layout(name).ok_or_else(|| {
            Error::model_format(format!("'{}' lacks the tensor '{name}'", file.path().display()))
        })?;
        let shape_ok = match rows {
            Some(r) => dims == [r, cols],
            None => dims.len() == 2 && dims[1] == cols && dims[0] > 0,
        };
        if !shape_ok {
            let want = rows.map(|r| format!("[{r}, {cols}]")).unwrap_or_else(|| format!("[vocab, {cols}]"));
            return Err(Error::model_format(format!(
                "'{}': tensor '{name}' has shape {dims:?}, expected {want}",
                file.path().display()
            )));
        }
        let format = weight_format(dtype).ok_or_else(|| {
            Error::model_format(format!(
                "'{}': tensor '{name}' is {}, not a matrix format",
                file.path().display(),
                dtype.name()
            ))
        })?;
        Ok(Part { format, range: file.tensor_range(name)?, rows: dims[0] })
    }

    /// A vector tensor (norm weights, biases) of `len` values.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let values = self.file.tensor_f32(name)?;
        if values.len() != len {
            return Err(Error::model_format(format!(
                "'{}': tensor '{name}' has {} values, expected {len}",
                self.file.path().display(),
                values.len()
            )));
        }
        Ok(values)
    }

    fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        match self.file.has_tensor(name) {
            true => self.vector(name, len).map(Some),
            false => Ok(None),
        }
    }

    fn required_if(&self, required: bool, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        match required {
            true => self.vector(name, len).map(Some),
            false => Ok(None),
        }
    }
}

/// Whether local layers rotate with a base of their own (Gemma 3), i.e. a second table.
fn has_local_rope_table(config: &Config) -> bool {
    matches!(config.family.sliding, SlidingLayers::Interleaved { .. })
        && config.rope.local_base != config.rope.base
}

/// The rope angle tables: the global one, then the local layers' where their base differs;
/// both divided by the file's frequency factors where its scaling has them.
fn rope_tables(file: &GgufFile, config: &Config, context_length: usize) -> Result<Vec<Vec<f32>>> {
    let factors = match config.rope.factor_tensor(context_length).filter(|n| file.has_tensor(n)) {
        Some(name) => Some(file.tensor_f32(name)?),
        None => None,
    };
    let rope = &config.rope;
    let mut tables = vec![rope.inverse_frequencies(config.head_dim, rope.base, factors.as_deref())?];
    if has_local_rope_table(config) {
        tables.push(rope.inverse_frequencies(config.head_dim, rope.local_base, factors.as_deref())?);
    }
    Ok(tables)
}

/// The matrices of a model to repack, each the rows of its parts one after another.
#[derive(Default)]
struct MatrixPlan {
    shapes: Vec<MatrixShape>,
    parts: Vec<Vec<Part>>,
}

impl MatrixPlan {
    /// Plans a matrix whose rows are those of `parts` one after another; returns its index.
    fn add(&mut self, parts: &[Part], cols: usize) -> usize {
        let rows = parts.iter().map(|p| p.rows).sum();
        self.shapes.push(MatrixShape { format: parts[0].format, rows, cols });
        self.parts.push(parts.to_vec());
        self.shapes.len() - 1
    }

    /// Plans matrices applied to the same input: one stacked matrix when their formats agree
    /// and groups do not straddle parts (Q4_K_M files often store V in Q6_K), else one per
    /// part. Returns their indices.
    fn side_by_side(&mut self, parts: &[Part], cols: usize) -> Vec<usize> {
        let format = parts[0].format;
        let whole_groups = parts[..parts.len() - 1].iter().all(|p| p.rows.is_multiple_of(GROUP));
        if parts.iter().all(|p| p.format == format) && whole_groups {
            return vec![self.add(parts, cols)];
        }
        parts.iter().map(|p| self.add(std::slice::from_ref(p), cols)).collect()
    }

    /// Repacks every planned matrix into one [`WeightSpace`] (a few huge allocations for the
    /// whole model), reporting progress as the fraction of `total` GGUF bytes repacked.
    fn repack(self, data: &[u8], total: u64, progress: Progress<'_>) -> Result<Vec<Arc<QuantMatrix>>> {
        let mut space = WeightSpace::new(self.shapes).map_err(|e| match e {
            SpaceError::Shape(why) => Error::model_format(why),
            SpaceError::Memory(why) => Error::new(ErrorKind::Backend, format!("out of memory: {why}")),
        })?;
        let mut done = 0u64;
        for (i, parts) in self.parts.iter().enumerate() {
            let bytes: Vec<(&[u8], usize)> = parts.iter().map(|p| (&data[p.range.clone()], p.rows)).collect();
            space.fill(i, &bytes).map_err(Error::model_format)?;
            done += parts.iter().map(|p| p.range.len() as u64).sum::<u64>();
            if !progress(done as f32 / total as f32) {
                return Err(Error::load_cancelled());
            }
        }
        Ok(space.finish().into_iter().map(Arc::new).collect())
    }
}
