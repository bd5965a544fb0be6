(CNN) -- The Lions beat the Hawks 5 to 1 in Oakridge on Tuesday night.

James Wood scored twice in the second half.

The win moves the Lions to the top of the league.

More than 6 thousand fans watched the game.

The Hawks have now lost three games in a row.

@highlight

The Lions beat the Hawks 5 to 1

@highlight

James Wood scores twice in the second half

