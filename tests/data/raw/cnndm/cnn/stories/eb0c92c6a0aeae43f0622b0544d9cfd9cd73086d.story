(CNN) -- The Oakridge council approved a new school on Tuesday.

The school will cost about 8 million dollars.

Mayor Sara Chen said the project would help families across Oakridge.

Work is expected to begin in March.

Some residents said the money should be spent on roads instead.

@highlight

Oakridge council approves a new school

@highlight

The project will cost about 8 million dollars

