"""What a process runs on: the device, numeric precision, and torchrun's process group."""
