(CNN) -- The Oakridge council approved a new bus station on Tuesday.

The bus station will cost about 39 million dollars.

Mayor Anna Price said the project would help families across Oakridge.

Work is expected to begin in March.

Some residents said the money should be spent on roads instead.

@highlight

Oakridge council approves a new bus station

@highlight

The project will cost about 39 million dollars

