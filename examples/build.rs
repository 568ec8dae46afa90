//! The examples link libtorch through finetune-local: give them an rpath to
//! it, as any downstream package does.

fn main() {
    finetune_build::link_libtorch();
}
