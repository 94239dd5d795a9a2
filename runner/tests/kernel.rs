//! Real-kernel tests of the runner (filled in below).
use integration::harness::{self, KernelTest};

fn main() -> std::process::ExitCode {
    let tests: &[KernelTest] = &[];
    harness::main(tests)
}
