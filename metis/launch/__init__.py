"""What the entry points do around the work: start-up checks of a config (:mod:`metis.launch.validate`),
seeding, resume, the dry run and the end-of-run summary (:mod:`metis.launch.run`). Above every
layer: only the entry points import it."""
