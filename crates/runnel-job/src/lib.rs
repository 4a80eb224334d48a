//! Pure job planning: stages, variables, and shell script generation.
