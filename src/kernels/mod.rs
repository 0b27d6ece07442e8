//! Our own quantized CPU kernels, used where candle's are slow (its Q4_1 path is scalar).
//! Each kernel has a straightforward reference implementation it is tested against, and picks
//! its SIMD path at run time.

pub mod q4_1;
