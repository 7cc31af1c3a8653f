//! `toolbox`: see the library for what it is.

fn main() {
    let code = wasmpod_toolbox::main_entry();
    // The applet flushed its output; exit with its code exactly (preview1 `proc_exit`).
    std::process::exit(code);
}
