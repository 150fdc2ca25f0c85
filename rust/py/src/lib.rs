//! `ferrolm._core`: the PyO3 extension. Glue only: each file mirrors a module of
//! `ferrolm_core`, converts arguments, releases the GIL for long calls and maps errors
//! ([`errors`]). No logic lives here.

mod convert;
mod errors;
mod io;
mod model;
mod runtime;
mod tokenizer;
mod train;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(runtime::cpu_features, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::available_isas, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::kernel_isa, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_pool_workers, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_fail_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_qmatmul, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_sleep_detached, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_read_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_check_memory, m)?)?;
    m.add_function(wrap_pyfunction!(io::_exchange_paths, m)?)?;
    m.add_function(wrap_pyfunction!(train::train_bpe, m)?)?;
    m.add_function(wrap_pyfunction!(train::train_wordpiece, m)?)?;
    m.add_class::<tokenizer::PyTokenizer>()?;
    m.add_function(wrap_pyfunction!(model::decoder_architectures, m)?)?;
    m.add_function(wrap_pyfunction!(model::gguf_architecture, m)?)?;
    m.add_class::<model::PyCausalLm>()?;
    m.add_class::<model::PyCache>()?;
    m.add_class::<model::PyGeneration>()?;
    m.add_class::<model::PyBert>()?;
    m.add_class::<tokenizer::PyDecodeStream>()?;
    m.add_class::<tokenizer::PyChatTemplate>()?;
    m.add_function(wrap_pyfunction!(tokenizer::gguf_tokenizer, m)?)?;
    Ok(())
}
