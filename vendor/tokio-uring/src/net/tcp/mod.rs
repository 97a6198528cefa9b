mod listener;
pub use listener::TcpListener;

mod multishot;
pub use multishot::Received;

mod stream;
pub use stream::TcpStream;
