fn main() {
    println!("0 seeds, 0 violations");
}
