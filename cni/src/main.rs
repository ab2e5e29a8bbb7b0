//! `weir-cni`: reads the CNI environment and stdin, writes the result or error JSON to stdout.
fn main() {
    // The runtime's environment may hold anything; only the CNI variables must be UTF-8 (a
    // non-UTF-8 one of those is an error naming it, anything else is ignored).
    let (env, bad) = weir_cni::environment(std::env::vars_os());
    let mut stdin = Vec::new();
    let read = std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin);
    let outcome = match (read, bad) {
        (_, Some(name)) => Err(weir_cni::CniError::InvalidEnv(format!("{name} (not valid UTF-8)"))),
        (Ok(_), None) => weir_cni::run(&env, &stdin),
        (Err(e), None) => Err(weir_cni::CniError::Io(format!("reading stdin: {e}"))),
    };
    let (text, code) = weir_cni::render(&stdin, outcome);
    if !text.is_empty() {
        println!("{text}");
    }
    std::process::exit(code);
}
