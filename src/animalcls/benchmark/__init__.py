"""The measurements of `animalcls bench`, one layer below its verb (animalcls.commands.bench): the
engine against the compute limit (measure), and whole runs under old and new settings (sweep)."""
