#![no_std]
// This file exists to give the crate a library target, so that proxy-user can
// name it as a build dependency (aya-template does the same).
