fn main() {
    println!("route-mirror: under construction");
}
