(CNN) -- The Cedar Falls council approved a new bus station on Thursday.

The bus station will cost about 5 million dollars.

Mayor Tom Keller said the project would help families across Cedar Falls.

Work is expected to begin in March.

Some residents said the money should be spent on roads instead.

@highlight

Cedar Falls council approves a new bus station

@highlight

The project will cost about 5 million dollars

