"""Hardware database: sourced YAML items (devices, CPUs, memory, links, storage, systems) and topology."""
