//! Black-box SMTP dialogs: each `tests/dialogs/<name>.txt` is a send/expect
//! script run by `common::dialog` against a fresh `ringmx serve`.

mod common;

macro_rules! dialogs {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                common::dialog::run(stringify!($name));
            }
        )*

        /// A new script without a test here would silently never run.
        #[test]
        fn every_dialog_file_has_a_test() {
            let listed = [$(stringify!($name)),*];
            for name in common::dialog::all() {
                assert!(listed.contains(&name.as_str()), "add {name} to dialogs! in {}", file!());
            }
        }
    };
}

dialogs!(
    address_syntax,
    bare_newline,
    bdat_unknown_size,
    chunking,
    errors_close,
    full_transaction,
    http_request,
    pipelined_transactions,
    quit,
    relay_denial,
    rset,
    size_rejections,
);
