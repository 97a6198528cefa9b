//! stub
use std::path::{Path, PathBuf};
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: {why}")]
    Spec { file: String, why: String },
}
pub fn run(_f: &Path, _o: Option<&Path>) -> Result<PathBuf, ScenarioError> {
    todo!()
}
