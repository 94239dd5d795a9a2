use integration::harness::{self, KernelTest};
fn main() -> std::process::ExitCode {
    harness::main(&[] as &[KernelTest])
}
