/// The native model read straight from the file: raw GGUF blocks repacked into our kernels'
/// form (Q/K/V and gate/up stacked as they are read where their formats agree; Q4_K_M files
/// often store V in Q6_K), with no intermediate tensors. `None` (nothing read) when some matrix
/// is in a format our kernels do not take: those run on candle. RoPE tables are left empty for
/// the caller.
fn native_from_file(
    file: &GgufFile,
    hp: &Hyper,
    names: &[String],
    inverse_frequencies: &[f32],
    total: u64,
    progress: Progress<'_>,
) -> Result<Option<native::NativeLlama>> {
    let format = |file: &GgufFile, name: &str| file.tensor_layout(name).and_then(|l| weight_format(l.0));
    let (q_dim, kv_dim) = (hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim);
    let output_name = if file.has_tensor("output.weight") { "output.weight" } else { "token_embd.weight" };
    let mut usable = format(file, "token_embd.weight").is_some() && format(file, output_name).is_some();
    for i in 0..hp.n_layers {
        usable &= ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
            .iter()
            .all(|t| format(file, &format!("blk.{i}.{t}.weight")).is_some());
    }
    if !usable {
        return Ok(None);
    }
    let data = file.mapped();
    let check = |file: &GgufFile, name: &str, rows: Option<usize>, cols: usize| -> Result<&[u8]> {
        let dims = file.tensor_layout(name).map(|l| l.1).unwrap_or_default();
        let ok = match rows {
            Some(r) => dims == [r, cols],
            None => dims.len() == 2 && dims[1] == cols,
        };
        if !ok {
            let want = rows.map(|r| format!("[{r}, {cols}]")).unwrap_or_else(|| format!("[vocab, {cols}]"));
            return Err(Error::model_format(format!(
                "'{}': tensor '{name}' has shape {dims:?}, expected {want}",
                file.path().display()
            )));
        }
        Ok(&data[file.tensor_range(name)?])
    };
    let floats = |file: &GgufFile, name: &str, len: usize| -> Result<Vec<f32>> {
        let v = dequant(file.tensor(name, &Device::Cpu)?, &Device::Cpu)?
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(Error::backend)?;
        if v.len() != len {
            return Err(Error::model_format(format!(
                "'{}': tensor '{name}' has {} values, expected {len}",
                file.path().display(),
                v.len()
            )));
        }
        Ok(v)
    };
    // Every matrix is planned first and then repacked into one WeightSpace (a few huge
    // allocations for the whole model: see WeightSpace).
    let mut plan = MatrixPlan::default();
    let dim = hp.dim;
    let embd = check(file, "token_embd.weight", None, dim)?;
    let embd_format = format(file, "token_embd.weight").expect("checked");
    let vocab = embd.len()
        / (dim / (crate::kernels::BLOCK * embd_format.kernel_blocks()) * embd_format.gguf_block_bytes());
    let embeddings = plan.add(embd_format, &[(embd, vocab)], dim);
    let output = if output_name == "output.weight" {
        let output_format = format(file, output_name).expect("checked");
        plan.add(output_format, &[(check(file, output_name, Some(vocab), dim)?, vocab)], dim)
    } else {
        // Tied: the output layer is the embedding table; one copy serves both.
        embeddings
    };
    let output_norm = floats(file, "output_norm.weight", dim)?;
    struct LayerPlan {
        attn_norm: Vec<f32>,
        qkv: Vec<usize>,
        wo: usize,
        ffn_norm: Vec<f32>,
        gate_up: Vec<usize>,
        down: usize,
    }
    let mut layer_plans = Vec::with_capacity(hp.n_layers);
    for i in 0..hp.n_layers {
        let n = |t: &str| format!("blk.{i}.{t}.weight");
        let [fq, fk, fv, fo, fg, fu, fd] =
            ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
                .map(|t| format(file, &n(t)).expect("checked"));
        let (q, k, v) = (
            check(file, &n("attn_q"), Some(q_dim), dim)?,
            check(file, &n("attn_k"), Some(kv_dim), dim)?,
            check(file, &n("attn_v"), Some(kv_dim), dim)?,
        );
        let qkv = plan.side_by_side(&[(fq, q, q_dim), (fk, k, kv_dim), (fv, v, kv_dim)], dim);
        let wo = plan.add(fo, &[(check(file, &n("attn_output"), Some(dim), q_dim)?, dim)], q_dim);
        let (g, u) = (
            check(file, &n("ffn_gate"), Some(hp.ffn_dim), dim)?,
            check(file, &n("ffn_up"), Some(hp.ffn_dim), dim)?,
        );
        let gate_up = plan.side_by_side(&[(fg, g, hp.ffn_dim), (fu, u, hp.ffn_dim)], dim);
        let down = plan.add(fd, &[(check(file, &n("ffn_down"), Some(dim), hp.ffn_dim)?, dim)], hp.ffn_dim);
        layer_plans.push(LayerPlan {
            attn_norm: floats(file, &n("attn_norm"), dim)?,
            qkv,
            wo,
            ffn_norm: floats(file, &n("ffn_norm"), dim)?,
            gate_up,
            down,
        });
    }
    debug_assert!(names.iter().all(|n| file.has_tensor(n) || n == "output.weight"));
    let matrices = plan.repack(total, progress)?;
    let side_by_side =
        |indices: Vec<usize>| native::SideBySide(indices.into_iter().map(|i| matrices[i].clone()).collect());
    let (embeddings, output) = (matrices[embeddings].clone(), matrices[output].clone());
    let layers = layer_plans
        .into_iter()
        .map(|p| native::NativeLayer {
            attn_norm: p.attn_norm,
            qkv: side_by_side(p.qkv),
            wo: matrices[p.wo].clone(),
            ffn_norm: p.ffn_norm,
            gate_up: side_by_side(p.gate_up),
            down: matrices[p.down].clone(),
        })
        .collect();
    if !progress(1.0) {
        return Err(Error::load_cancelled());
    }
    Ok(Some(native::NativeLlama {
        hp: hp.clone(),
        embeddings,
        output,
        output_norm,
        layers,
        inverse_frequencies: inverse_frequencies.to_vec(),
    }))
}

/// The block format our kernels take for a GGUF type, if they take it.
fn weight_format(dtype: GgmlDType) -> Option<WeightFormat> {
    match dtype {
        GgmlDType::Q4_0 => Some(WeightFormat::Q4_0),
        GgmlDType::Q4_1 => Some(WeightFormat::Q4_1),
        GgmlDType::Q8_0 => Some(WeightFormat::Q8_0),
        GgmlDType::Q4K => Some(WeightFormat::Q4K),
        GgmlDType::Q6K => Some(WeightFormat::Q6K),
        _ => None,
    }
}

/// The matrices of a model to repack, with their GGUF bytes.
#[derive(Default)]
struct MatrixPlan<'a> {
    shapes: Vec<MatrixShape>,
    parts: Vec<Vec<(&'a [u8], usize)>>,
}

impl<'a> MatrixPlan<'a> {
    /// Plans a matrix whose rows are those of `parts` one after another; returns its index.
    fn add(&mut self, format: WeightFormat, parts: &[(&'a [u8], usize)], cols: usize) -> usize {
        self.shapes.push(MatrixShape { format, rows: parts.iter().map(|p| p.1).sum(), cols });
        self.parts.push(parts.to_vec());
        self.shapes.len() - 1
    }

    /// Plans matrices applied to the same input: one stacked matrix when their formats agree
    /// and groups do not straddle parts, else one per part. Returns their indices.
    fn side_by_side(&mut self, parts: &[(WeightFormat, &'a [u8], usize)], cols: usize) -> Vec<usize> {
        let (f0, whole) = (parts[0].0, &parts[..parts.len() - 1]);
        if parts.iter().all(|p| p.0 == f0) && whole.iter().all(|p| p.2 % GROUP == 0) {
            let stack: Vec<(&[u8], usize)> = parts.iter().map(|p| (p.1, p.2)).collect();
            return vec![self.add(f0, &stack, cols)];
        }
        parts.iter().map(|p| self.add(p.0, &[(p.1, p.2)], cols)).collect()
    }

    /// Repacks every planned matrix into one [`WeightSpace`], reporting progress as the
    /// fraction of `total` GGUF bytes repacked.
    fn repack(self, total: u64, progress: Progress<'_>) -> Result<Vec<Arc<QuantMatrix>>> {
        let mut space = WeightSpace::new(self.shapes).map_err(Error::model_format)?;
        let mut done = 0u64;
        for (i, parts) in self.parts.iter().enumerate() {
            space.fill(i, parts).map_err(Error::model_format)?;
            done += parts.iter().map(|p| p.0.len() as u64).sum::<u64>();
            if !progress(done as f32 / total as f32) {
                return Err(Error::load_cancelled());
            }
        }
        Ok(space.finish().into_iter().map(Arc::new).collect())
    }
}
