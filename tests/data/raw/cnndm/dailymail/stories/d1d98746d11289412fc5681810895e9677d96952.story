Heavy rain flooded streets in Oakridge on Thursday.

Emergency crews rescued 4 people from their cars.

Fire chief Sara Chen asked drivers to stay at home.

Forecasters expect more storms later this week.

Schools in the area will stay closed until the water goes down.

