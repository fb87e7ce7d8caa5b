"""Model FLOPs per sample of a ViViT by formula (matrix products only), from the model's sizes."""


def model_flops(flax_model, input_shape, num_classes):
  """Model FLOPs per sample (one multiply-add = 2 FLOPs; matrix products only).

  With D = hidden size, M = MLP width, N tokens in a transformer and L the length of the axis a
  token attends along (summed over the heads that attend along it, as a fraction of them):
    tokeniser        2 * tokens * (t*h*w*C) * D                (tubelet or 2D patch embedding)
    per layer        8 * N * D^2                               (Q, K, V and output projections)
                   + 4 * N * L * D                             (scores Q.K and weighted sum P.V)
                   + 4 * N * D * M                             (the two MLP layers)
    head             2 * D * classes  (or 2*D*R + 2*R*classes with a representation layer)
  Model 1: one encoder over all N = t*h*w (+1 class token) tokens, L = N. Model 2: a spatial
  encoder over t sequences of h*w (+1) tokens, then a temporal encoder over t (+1) tokens.
  Model 3: per layer two attention sub-layers (L = t over time, L = h*w over space), each with
  its own projections. Model 4: one sub-layer, half the heads with L = t, half with L = h*w.
  A train step costs 3x the forward pass (forward, input gradients, weight gradients) less the
  tokeniser's input gradient, which is never computed (the clips are not differentiated).
  Element-wise work (LayerNorm, softmax, GELU, the optimizer) is not counted: XLA's cost
  analysis, which counts it, comes out a few percent higher.
  """
  t_in, h_in, w_in, c = input_shape
  gt, gh, gw = flax_model.token_grid((t_in, h_in, w_in))
  d = flax_model.hidden_size
  ph, pw = flax_model.patch_size[:2]
  pt = (
      1
      if flax_model.tokenizer == 'temporal_sampling'
      else flax_model.patch_size[2]
  )
  cls = int(flax_model.classifier == 'token')
  space = gh * gw

  def encoder(size, sequences, length, sublayers):
    """FLOPs of an encoder over `sequences` sequences of `length` tokens; each attention
    sub-layer is a list of (attended length, fraction of the heads)."""
    n = sequences * length
    layer = 4 * n * d * size.mlp_dim
    for sublayer in sublayers:
      layer += 8 * n * d * d + sum(
          4 * n * span * d * share for span, share in sublayer
      )
    return int(size.num_layers * layer)

  parts = {'tokenizer': 2 * gt * space * pt * ph * pw * c * d}
  kind = flax_model.attention_type
  if kind == 'factorized_encoder':
    parts['spatial_encoder'] = encoder(
        flax_model.spatial_transformer, gt, space + cls, [[(space + cls, 1.0)]]
    )
    parts['temporal_encoder'] = encoder(
        flax_model.temporal_transformer, 1, gt + cls, [[(gt + cls, 1.0)]]
    )
  else:
    tokens = gt * space + cls
    sublayers = {
        'spacetime': [[(tokens, 1.0)]],
        'factorized_self_attention_block': [[(gt, 1.0)], [(space, 1.0)]],
        'factorized_dot_product_attention': [[(gt, 0.5), (space, 0.5)]],
    }[kind]
    parts['encoder'] = encoder(flax_model.transformer, 1, tokens, sublayers)
  r = flax_model.representation_size
  parts['head'] = (
      2 * d * num_classes if r is None else 2 * d * r + 2 * r * num_classes
  )
  forward = sum(parts.values())
  return {
      'forward': forward,
      'train': 3 * forward - parts['tokenizer'],
      'parts': parts,
  }
